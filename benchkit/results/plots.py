"""Speed/quality plots from a results directory: the Pareto plot, FID against steps, FID against training FLOPs
(convergence), training curves.

Every function draws with matplotlib's Agg backend (no display needed), saves a PNG and returns the data it
plotted, so tests and callers can check the numbers rather than the pixels.

Deviations:
- The Pareto front treats FID and sampling images/s as the only two objectives; rows that tie on both are
  all kept on the front.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter

from benchkit.core.errors import ConfigError
from benchkit.core.files import atomic_write_bytes
from benchkit.results.seeds import table_rows
from benchkit.results.store import read_rows
from benchkit.results.tables import TABLE_FILES_CSV, human_number, split_kinds

log = logging.getLogger(__name__)

DPI = 120
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
Series = dict[str, list[tuple[float, float]]]


def _axes() -> tuple[Figure, Axes]:
    # A bare Figure renders through the Agg canvas and leaves pyplot's global state (and backend) alone.
    fig = Figure(figsize=(7, 4.5))
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())


def _usable(df: pd.DataFrame, cols: tuple[str, ...]) -> pd.DataFrame:
    """Generator rows whose ``cols`` are all present and finite."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        return df.iloc[0:0]
    gen, _ = split_kinds(df)
    num = gen[list(cols)].apply(pd.to_numeric, errors="coerce").astype("float64")
    ok = num.map(math.isfinite).all(axis=1)
    return gen[ok]


def _text(v: Any) -> str:
    return "?" if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else str(v)


def _row_ids(df: pd.DataFrame) -> list[str]:
    ids = df["row_id"] if "row_id" in df.columns else pd.Series([None] * len(df), index=df.index)
    return [str(r) if isinstance(r, str) else f"row{i}" for i, r in zip(df.index, ids)]


def pareto_front(fid: list[float], speed: list[float]) -> list[int]:
    """Indices of the non-dominated points (lower FID, higher speed better), by increasing speed."""
    order = sorted(range(len(fid)), key=lambda i: (-speed[i], fid[i]))
    front: list[int] = []
    best, best_speed = math.inf, math.nan
    # 1. Sweep from the fastest point; a point is kept if it beats the best FID of every faster point.
    for i in order:
        if fid[i] < best:
            front.append(i)
            best, best_speed = fid[i], speed[i]
        elif fid[i] == best and speed[i] == best_speed:  # an exact tie dominates neither way
            front.append(i)
    return front[::-1]


def pareto_plot(df: pd.DataFrame, path: Path) -> list[str]:
    """Save :func:`pareto_figure` as a PNG; returns the row_ids on the Pareto front by increasing images/s."""
    fig, front = pareto_figure(df)
    _save(fig, path)
    return front


def pareto_figure(df: pd.DataFrame) -> tuple[Figure, list[str]]:
    """FID against sampling images/s (log x; log y when FID spans a decade): marker per generator, colour per head,
    every point numbered and listed in the key beside the plot (tokenizer+generator+head, setting, FID), the front
    as a step line.

    Returns the figure and the row_ids on the Pareto front ordered by increasing images/s (``row<index>`` for rows
    without a row_id). Raises ConfigError when no row has both ``fid`` and ``images_per_s``.
    """
    data = _usable(df, ("fid", "images_per_s"))
    if not data.empty:
        data = data[data["images_per_s"].astype("float64") > 0]
    if data.empty:
        raise ConfigError("no generator rows with both fid and images_per_s > 0; run `benchkit eval` first")
    data = data.assign(_fid=data["fid"].astype("float64")).sort_values("_fid", kind="stable")
    fid, speed = data["_fid"].tolist(), data["images_per_s"].astype("float64").tolist()
    gens, heads = _column(data, "generator"), _column(data, "head")
    marker = dict(zip(sorted(set(gens)), itertools.cycle(MARKERS)))
    cmap = matplotlib.colormaps["tab10"]
    colour = {h: cmap(i % 10) for i, h in enumerate(sorted(set(heads)))}

    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    key: list[Line2D] = []
    ci = data["fid_ci95"].astype("float64").tolist() if "fid_ci95" in data else [math.nan] * len(data)
    for n, (g, h, x, y, e, name) in enumerate(zip(gens, heads, speed, fid, ci, _point_names(data)), start=1):
        if math.isfinite(e):  # 95% interval over training seeds
            ax.errorbar(x, y, yerr=e, color=colour[h], linewidth=1, capsize=3, zorder=2)
        ax.scatter(x, y, marker=marker[g], color=colour[h], s=55, edgecolors="black", linewidths=0.5, zorder=3)
        ax.annotate(str(n), (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8, zorder=4)
        key.append(Line2D([], [], marker=marker[g], color=colour[h], linestyle="", label=f"{n}. {name}"))
    front = pareto_front(fid, speed)
    fx, fy = [speed[i] for i in front], [fid[i] for i in front]
    # 2. The best FID reachable at speed >= x is the next front point to the right: a "pre" step.
    ax.step(fx, fy, where="pre", color="0.3", linestyle="--", linewidth=1.2, zorder=2)
    _log_axis(ax.xaxis, ax.set_xscale, speed)
    log_fid = min(fid) > 0 and max(fid) / min(fid) >= 10
    if log_fid:
        _log_axis(ax.yaxis, ax.set_yscale, fid)
    ax.set_xlabel("sampling images/s (log scale)")
    feats = sorted({_text(v) for v in data["features"]}) if "features" in data else []
    what = f"FID ({', '.join(feats)} features)" if feats and feats != ["?"] else "FID"
    ax.set_ylabel(what + (" (log scale)" if log_fid else ""))
    ax.set_title("quality vs sampling speed (lower-right is better)")
    styles = [Line2D([], [], marker=marker[g], color="0.5", linestyle="", label=f"generator: {g}") for g in marker]
    styles += [Line2D([], [], marker="o", color=colour[h], linestyle="", label=f"head: {h}") for h in colour]
    styles.append(Line2D([], [], color="0.3", linestyle="--", label="Pareto front"))
    if any(math.isfinite(e) for e in ci):
        styles.append(Line2D([], [], color="0.3", marker="|", linestyle="-", label="95% interval over training seeds"))
    styles.append(Line2D([], [], linestyle="", label="rows, by FID:"))
    ax.legend(handles=styles + key, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    ids = _row_ids(data)
    return fig, [ids[i] for i in front]


def _column(data: pd.DataFrame, name: str) -> list[str]:
    return [_text(v) for v in (data[name] if name in data else [None] * len(data))]


def _point_names(data: pd.DataFrame) -> list[str]:
    """``tokenizer+generator+head setting, FID x`` for each row (setting: the sampling values that differ between
    rows of the same model, the CFG of a guided row and a temperature other than 1)."""
    model = [
        "+".join(parts) for parts in zip(_column(data, "tokenizer"), _column(data, "generator"), _column(data, "head"))
    ]
    knobs = [k for k in ("steps", "cfg", "cfg_schedule", "temperature", "diffusion_steps") if k in data]
    names = []
    for i, (_, row) in enumerate(data.iterrows()):
        same = data[[m == model[i] for m in model]]
        varying = [k for k in knobs if same[k].map(_text).nunique() > 1]
        cfg = pd.to_numeric(row.get("cfg"), errors="coerce")
        if "cfg" not in varying and pd.notna(cfg) and cfg != 1.0:
            varying += [k for k in ("cfg", "cfg_schedule") if k in data]  # a tuned or guided single row says so
        temperature = pd.to_numeric(row.get("temperature"), errors="coerce")
        if "temperature" not in varying and pd.notna(temperature) and temperature != 1.0:
            varying.append("temperature")  # so does a tuned temperature
        setting = " ".join(f"{k}={_text(row[k])}" for k in varying)
        names.append(f"{model[i]} {setting}".strip() + f", FID {row['_fid']:.3g}")
    return names


def _log_axis(axis: Any, set_scale: Any, values: list[float]) -> None:
    """Log scale with plain-number labels at 1-2-5 steps (1 per decade beyond three decades), none on minor ticks,
    so the labels never overlap."""
    set_scale("log")
    decades = math.log10(max(values) / min(values)) if min(values) > 0 else 0.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def fid_vs_steps_plot(df: pd.DataFrame, path: Path) -> Series:
    """FID against generation steps, one line per (generator, head, tokenizer).

    Dataset and feature tags join the series key when they vary. Where a series has several rows at one
    step count (a CFG or temperature sweep), the best FID is plotted. Returns {label: [(steps, fid), ...]};
    ConfigError when no series has two step counts (a plot of single points says nothing).
    """
    data = _usable(df, ("fid", "steps"))
    if data.empty:
        raise ConfigError("no generator rows with both fid and steps; run `benchkit eval` first")
    keys = ["generator", "head", "tokenizer"]
    keys += [k for k in ("dataset", "features") if k in data and data[k].map(_text).nunique() > 1]
    labels = data.apply(lambda r: "/".join(_text(r.get(k)) for k in keys), axis=1)
    series: Series = {}
    for label in sorted(set(labels)):
        part = data[labels == label]
        best = part.assign(_s=part["steps"].astype("float64"), _f=part["fid"].astype("float64"))
        best = best.groupby("_s")["_f"].min().sort_index()
        series[label] = [(int(s) if float(s).is_integer() else float(s), float(f)) for s, f in best.items()]
    if all(len(pts) < 2 for pts in series.values()):
        raise ConfigError("every model has rows at one step count only: FID against steps needs two per model")

    fig, ax = _axes()
    for (label, pts), m in zip(series.items(), itertools.cycle(MARKERS)):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=m, label=label)
    if all(p[0] > 0 for pts in series.values() for p in pts):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.minorticks_off()
    ax.set_xlabel("generation steps")
    ax.set_ylabel("FID")
    ax.set_title("FID vs steps (" + "/".join(keys) + ")")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    _save(fig, path)
    return series


def fid_vs_train_flops_plot(
    series: dict[str, list[tuple[float, ...]]], path: Path
) -> dict[str, list[tuple[float, ...]]]:
    """Convergence FID against training FLOPs (log x; log y when FID spans a decade), one line per model
    ``{tokenizer+generator+head: [(train_flops, fid[, low, high]), ...]}`` (``benchkit.results.convergence
    .convergence_series``: the mean over training seeds, and the band from the lowest to the highest seed)."""
    series = {k: sorted(v) for k, v in series.items() if v}
    if not series:
        raise ConfigError("no convergence points to plot; train with train.convergence_points > 0")
    flops = [p[0] for pts in series.values() for p in pts]
    fids = [v for pts in series.values() for p in pts for v in p[1:]]
    fig, ax = _axes()
    banded = False
    for (label, pts), m in zip(series.items(), itertools.cycle(MARKERS)):
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=m, label=label, linewidth=1.2)
        if all(len(p) == 4 for p in pts) and any(p[2] != p[3] for p in pts):  # training seeds: lowest to highest
            banded = True
            ax.fill_between(
                [p[0] for p in pts],
                [p[2] for p in pts],
                [p[3] for p in pts],
                color=line.get_color(),
                alpha=0.2,
                linewidth=0,
            )
    if min(flops) > 0:
        _log_axis(ax.xaxis, ax.set_xscale, flops)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_number(v, "g")))
    log_fid = min(fids) > 0 and max(fids) / min(fids) >= 10
    if log_fid:
        _log_axis(ax.yaxis, ax.set_yscale, fids)
    ax.set_xlabel("training FLOPs (counted, log scale)")
    mean = "mean FID over seeds" if banded else "FID"
    ax.set_ylabel(f"{mean} at the convergence points" + (" (log scale)" if log_fid else ""))
    if banded:
        ax.fill_between([], [], [], color="0.6", alpha=0.3, label="shaded: lowest to highest training seed")
    ax.set_title("convergence: FID vs training compute (lower is better)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    _save(fig, path)
    return series


def training_curves_plot(csv_paths: dict[str, Path], path: Path) -> Series:
    """Loss against step for each run's CSV log (columns ``step,loss,...``). Returns {run: [(step, loss)]}."""
    series: Series = {}
    for name, csv in csv_paths.items():
        log_df = pd.read_csv(csv)
        missing = [c for c in ("step", "loss") if c not in log_df.columns]
        if missing:
            raise ConfigError(f"{csv}: needs columns step and loss; has {', '.join(map(str, log_df.columns))}")
        log_df = log_df[["step", "loss"]].apply(pd.to_numeric, errors="coerce").dropna()
        series[name] = [
            (int(s) if float(s).is_integer() else float(s), float(v)) for s, v in zip(log_df["step"], log_df["loss"])
        ]
    if not series:
        raise ConfigError("no training logs to plot")
    fig, ax = _axes()
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training curves")
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, alpha=0.3)
    _save(fig, path)
    return series


def find_training_logs(results_dir: Path, exclude: Path | None = None) -> dict[str, Path]:
    """CSV files under ``results_dir`` whose header has ``step`` and ``loss``, keyed by their folder."""
    found: dict[str, Path] = {}
    for csv in sorted(Path(results_dir).rglob("*.csv")):
        if csv.name in TABLE_FILES_CSV or (exclude is not None and exclude.resolve() in csv.resolve().parents):
            continue
        try:
            header = csv.open(encoding="utf-8").readline().strip().split(",")
        except (OSError, UnicodeDecodeError):
            continue
        if "step" in header and "loss" in header:
            rel = csv.relative_to(results_dir)
            name = str(rel.parent) if str(rel.parent) != "." else csv.stem
            found[name if name not in found else str(rel.with_suffix(""))] = csv
    return found


def plots_from_results(results_dir: Path, out_dir: Path) -> list[Path]:
    """Every plot the rows allow: pareto.png, fid_vs_steps.png, training_curves.png. Returns the paths written."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    df = table_rows(split_kinds(read_rows(results_dir))[0])  # one point per model and setting, over its seeds
    written: list[Path] = []
    jobs = (
        ("pareto.png", ("fid", "images_per_s"), pareto_plot),
        ("fid_vs_steps.png", ("fid", "steps"), fid_vs_steps_plot),
    )
    for name, _cols, fn in jobs:
        try:
            fn(df, out_dir / name)
        except ConfigError as e:
            log.warning("skipping %s: %s", name, e)
            continue
        written.append(out_dir / name)
    logs = find_training_logs(results_dir, exclude=out_dir if out_dir != results_dir else None)
    if logs:
        training_curves_plot(logs, out_dir / "training_curves.png")
        written.append(out_dir / "training_curves.png")
    log.info("wrote %d plot(s) to %s", len(written), out_dir)
    return written
