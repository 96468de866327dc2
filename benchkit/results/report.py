"""One self-contained HTML page per results directory: ``report.html``.

The page holds the run's provenance (command, dates, machine, library versions, features used), the generator
and tokenizer tables (every column of ``table.csv`` / ``tokenizers.csv``, sortable by clicking a header), the
plots, each run's sample grid beside its rows, each tokenizer's reconstruction grid beside its numbers, and the
deviations: a ``deviations`` column when the rows carry one, the "Deviations:" list that each component used
states in its module docstring, and every setting of each run that differs from benchkit's defaults.
Images are embedded as base64 ``data:`` URIs and the only script is a short inline sorter, so the file opens
offline and can be mailed or attached as it is. The HTML comes from the Jinja2 template
``benchkit/templates/report.html.j2`` (autoescaped).

Deviations:
- benchkit knows its own defaults (the dataclass fields and component configs, whose sizes are ``tiny``), not
  the papers' full training recipes, so the per-run list compares with benchkit's defaults; the papers' sizes
  and recipes are in each component's docstring.
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import mimetypes
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchkit.core.config import RunConfig
from benchkit.core.errors import ConfigError
from benchkit.core.files import atomic_write_text
from benchkit.core.registry import GENERATORS, HEADS, TOKENIZERS
from benchkit.metrics.health import is_failing
from benchkit.results.store import ROWS_FILE, read_rows
from benchkit.results.tables import DECIMALS, HUMAN_COLUMNS, PROVENANCE, TABLE_FILES_CSV, human_number, write_tables

REPORT_FILE = "report.html"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
PLOTS = (
    ("pareto.png", "Quality vs sampling speed (Pareto)"),
    ("fid_vs_steps.png", "FID vs generation steps"),
    ("fid_vs_train_flops.png", "Convergence: FID vs training FLOPs"),
    ("training_curves.png", "Training curves"),
)
SAMPLE_GRID, RECON_GRID = "samples.png", "reconstructions.png"
ENV_KEYS = ("benchkit", "python", "torch", "torch_fidelity", "clean_fid", "cuda")
LONG_TEXT = 40  # characters: longer text cells (a deviations column, say) wrap rather than widen the table
HIDDEN = (*PROVENANCE, "kind")  # shown in the provenance block, not in the tables
HEALTH, HEALTH_BADGE = "health", "\u26a0"  # a row whose samples failed the health check: a warning sign in its cell


# ----------------------------------------------------------------------------------------------- small pieces
def data_uri(path: Path) -> str:
    """The file as a base64 ``data:`` URI (MIME type from the suffix)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"


def display_size(path: Path | None, box: tuple[int, int] = (420, 700)) -> tuple[int, int]:
    """(width, height) to show an image grid at: its pixel size times the largest whole factor (at least 1) that
    fits ``box``, so that small tiles are enlarged without blurring (the page renders them pixelated)."""
    if path is None:
        return 0, 0
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    scale = max(1, min(box[0] // max(w, 1), box[1] // max(h, 1)))
    return w * scale, h * scale


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or (isinstance(v, str) and v == "")


def cell(value: Any, col: str) -> dict[str, Any]:
    """One table cell: {"text": display text, "sort": sort key (a number's repr, or the text; "" when missing),
    "num": numeric, "long": text long enough to wrap}. A failed sample health check (``health`` diverged /
    collapsed) shows as a warning badge, ``⚠ DIVERGED``, sorting by its value."""
    num = isinstance(value, (int, float)) and not isinstance(value, bool) and not _missing(value)
    if col == HEALTH and is_failing(value):
        text, sort = f"{HEALTH_BADGE} {str(value).upper()}", str(value)
    elif _missing(value):
        text, sort = "-", ""
    elif isinstance(value, bool):
        text = sort = str(value).lower()
    elif num:
        v = float(value)
        if col in HUMAN_COLUMNS:
            text = human_number(v)
        elif v.is_integer() and not (col in DECIMALS and isinstance(value, float)):
            text = str(int(v))
        else:
            text = f"{v:.{DECIMALS.get(col, 4)}f}"
        sort = repr(v)
    else:
        text = sort = str(value)
    return {"text": text, "sort": sort, "num": num, "long": len(text) > LONG_TEXT}


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if _missing(v) else v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in df.to_dict(orient="records")
    ]


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a table CSV, values as pandas parses them; missing file -> ([], [])."""
    if not path.is_file():
        return [], []
    df = pd.read_csv(path)
    return [str(c) for c in df.columns], _records(df)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------------------------ collection
def _run_dir(out_root: Path, row: dict[str, Any]) -> Path | None:
    if _missing(row.get("run")):
        return None
    sub = "tokenizers" if row.get("kind") == "tokenizer" else "runs"
    return out_root / sub / str(row["run"])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "options":
            out.update(_flatten(v, key + "."))
        elif isinstance(v, dict):
            out.update({f"{key}.{ok}": ov for ok, ov in v.items()} if v else {})
        else:
            out[key] = v
    return out


def config_differences(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Settings of a run's ``config.json`` that differ from benchkit's defaults: [{key, value, default}].

    Run-level keys compare with ``RunConfig()``; ``tokenizer.options.*`` / ``generator.options.*`` /
    ``head.options.*`` with the component's config dataclass (``None`` where the component is unknown here).
    """

    defaults = _flatten(RunConfig().to_dict())
    for family, registry in (("tokenizer", TOKENIZERS), ("generator", GENERATORS), ("head", HEADS)):
        name = (config.get(family) or {}).get("name")
        if isinstance(name, str) and name in registry:
            defaults.update({f"{family}.options.{k}": v for k, v in registry.get(name).options().items()})
    skip = {"name", "out_dir", "device"}
    out = []
    for key, value in _flatten(config).items():
        default = defaults.get(key)
        if key in skip or _same(value, default):
            continue
        out.append({"key": key, "value": json.dumps(value, default=str), "default": json.dumps(default, default=str)})
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def stated_deviations(family: str, name: str) -> list[str]:
    """The "Deviations:" list in the module docstring of a registered component (empty when it states none)."""

    registry = {"tokenizer": TOKENIZERS, "generator": GENERATORS, "head": HEADS}[family]
    if name not in registry:
        return []
    doc = importlib.import_module(registry.get(name).module).__doc__ or ""
    _, found, rest = doc.partition("\nDeviations:")
    if not found:
        return []
    items: list[str] = []
    for line in rest.strip("\n").splitlines():
        if not line.strip():
            break
        if line.lstrip().startswith("- "):
            items.append(line.strip()[2:])
        elif items:
            items[-1] += " " + line.strip()
    return items


def _command(argv: list[Any]) -> str:
    """A recorded ``sys.argv`` as a shell line, the program shortened to ``benchkit`` (``python -m`` or a venv path)."""
    prog = Path(str(argv[0]))
    head = "benchkit" if prog.name == "benchkit" or prog.parent.name == "benchkit" else str(argv[0])
    return shlex.join([head, *map(str, argv[1:])])


def _provenance(run_dirs: list[Path], rows: list[dict[str, Any]], configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Commands, dates, machine, versions and features used, merged over every run directory."""
    envs = [_read_json(d / "env.json") for d in run_dirs]
    envs = [e for e in envs if e]

    def values(key: str, source: list[dict[str, Any]]) -> list[str]:
        return sorted({str(e[key]) for e in source if not _missing(e.get(key))})

    commands = sorted({_command(e["argv"]) for e in envs if isinstance(e.get("argv"), list) and e["argv"]})
    stamps = values("timestamp", rows)
    shas = sorted(
        {
            f"{e['git_sha'][:12]}{' (uncommitted changes)' if e.get('git_dirty') else ''}"
            for e in envs
            if isinstance(e.get("git_sha"), str)
        }
    )
    features = values("features", rows)
    switched = sorted({k for c in configs for k, v in _flatten(c).items() if v is True})
    return {
        "commands": commands,
        "dates": (f"{stamps[0]} to {stamps[-1]}" if len(stamps) > 1 else stamps[0]) if stamps else "-",
        "machine": {
            "platform": ", ".join(values("platform", envs)) or "-",
            "device": ", ".join(values("device", rows) or values("device", envs)) or "-",
        },
        "versions": {k: ", ".join(values(k, envs)) or "-" for k in ENV_KEYS},
        "git": ", ".join(shas) or "-",
        "features": features,
        "switches": switched,
    }


def _card(kind: str, run: str, rows: list[dict[str, Any]], columns: list[str], image: Path | None) -> dict[str, Any]:
    """One run (or tokenizer) with its grid: values shared by its rows as a list, the varying ones as a table."""
    cols = [c for c in columns if c not in HIDDEN]
    fixed = [c for c in cols if len({repr(r.get(c)) for r in rows}) == 1 and not _missing(rows[0].get(c))]
    varying = [c for c in cols if c not in fixed and not all(_missing(r.get(c)) for r in rows)]
    return {
        "kind": kind,
        "run": run,
        "anchor": "run-" + re.sub(r"[^A-Za-z0-9_-]", "-", run),
        "fixed": [(c, cell(rows[0].get(c), c)["text"]) for c in fixed],
        "columns": varying,
        "rows": [[cell(r.get(c), c) for c in varying] for r in rows],
        "image": data_uri(image) if image is not None else None,
        "image_size": display_size(image),
        "differences": [],
    }


def _table(columns: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    cols = [c for c in columns if c not in HIDDEN]
    body: list[dict[str, Any]] = [
        {
            "anchor": "run-" + re.sub(r"[^A-Za-z0-9_-]", "-", str(r.get("run"))),
            "row_id": r.get("row_id") or "",
            "cells": [cell(r.get(c), c) for c in cols],
        }
        for r in rows
    ]
    return {
        "columns": cols,
        "rows": body,
        "numeric": [any(b["cells"][i]["num"] for b in body) for i in range(len(cols))],
    }


def _group(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("run")), []).append(r)
    return groups


def collect(results_dir: Path, out_root: Path | None = None) -> dict[str, Any]:
    """Everything the template shows, read from ``results_dir`` (tables, plots) and the run directories under
    ``out_root`` (default: the results directory's parent) that its rows name (config, env, grids)."""
    results_dir = Path(results_dir)
    out_root = Path(out_root) if out_root is not None else results_dir.parent
    if not (results_dir / TABLE_FILES_CSV[0]).is_file():
        if not (results_dir / ROWS_FILE).is_file():
            raise ConfigError(
                f"{str(results_dir)!r} has no {TABLE_FILES_CSV[0]} or {ROWS_FILE}; "
                "run `benchkit run`, `benchkit sweep` or `benchkit eval` first"
            )
        write_tables(read_rows(results_dir), results_dir)  # as `benchkit table` does
    gen_cols, gen_rows = read_table(results_dir / TABLE_FILES_CSV[0])
    tok_cols, tok_rows = read_table(results_dir / TABLE_FILES_CSV[1])
    for r in gen_rows:
        r.setdefault("kind", "generator")
    for r in tok_rows:
        r["kind"] = "tokenizer"

    cards: list[dict[str, Any]] = []
    recon_cards: list[dict[str, Any]] = []
    used, run_dirs, configs = set(), [], []
    for kind, rows, cols, grid, out in (
        ("generator", gen_rows, gen_cols, SAMPLE_GRID, cards),
        ("tokenizer", tok_rows, tok_cols, RECON_GRID, recon_cards),
    ):
        for run, part in _group(rows).items():
            rdir = _run_dir(out_root, part[0])
            image = rdir / grid if rdir is not None and (rdir / grid).is_file() else None
            out.append(_card(kind, run, part, cols, image))
            if rdir is not None and rdir.is_dir():
                run_dirs.append(rdir)
                cfg = _read_json(rdir / "config.json")
                if cfg:
                    configs.append(cfg)
                    out[-1]["differences"] = config_differences(cfg)
            for fam in ("tokenizer", "generator", "head"):
                if isinstance(part[0].get(fam), str):
                    used.add((fam, part[0][fam]))

    plots, placed = [], set()
    for name, title in PLOTS:
        if (results_dir / name).is_file():
            plots.append({"title": title, "name": name, "uri": data_uri(results_dir / name), "known": True})
            placed.add(name)
    for path in sorted(results_dir.rglob("*")):  # every other image of the directory (e.g. newer plot kinds)
        rel = path.relative_to(results_dir).as_posix()
        if path.suffix.lower() in IMAGE_SUFFIXES and rel not in placed and not rel.startswith(("_", ".")):
            plots.append({"title": rel, "name": rel, "uri": data_uri(path), "known": False})

    dev_col = next((c for c in gen_cols if c.lower() in ("deviations", "deviation")), None)
    return {
        "title": f"benchkit report: {results_dir.name}",
        "results_dir": str(results_dir),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "provenance": _provenance(run_dirs, [*gen_rows, *tok_rows], configs),
        "generators": _table(gen_cols, gen_rows),
        "tokenizers": _table(tok_cols, tok_rows),
        "cards": cards,
        "recon_cards": recon_cards,
        "plots": plots,
        "row_deviations": [(r.get("run"), r[dev_col]) for r in gen_rows if dev_col and not _missing(r.get(dev_col))],
        "stated": [(fam, name, items) for fam, name in sorted(used) if (items := stated_deviations(fam, name))],
        "notes": _notes(gen_cols, gen_rows),
    }


def _notes(columns: list[str], rows: list[dict[str, Any]] | None = None) -> list[str]:
    notes = []
    failing = [r for r in rows or [] if is_failing(r.get(HEALTH))]
    if failing:
        runs = sorted({str(r.get("run")) for r in failing})
        notes.append(
            f"{HEALTH_BADGE} {len(failing)} generator row(s) failed the sample health check (health diverged or "
            f"collapsed: the sampled tokens are numerically meaningless next to the training tokens, so their FID "
            f"compares nothing); runs: {', '.join(runs)}. The health_reason column says why."
        )
    if "seed_spread_fid" in columns:
        notes.append(
            "seed_spread_fid is the FID difference between two seeds of the same model and setting: "
            "FID differences smaller than it are sampling noise."
        )
    return notes


def _literals(text: str) -> Any:
    """Escape docstring text and show its ``literals`` as <code>."""
    import markupsafe

    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(re.sub(r"``(.+?)``", r"<code>\1</code>", escaped))


def render(context: dict[str, Any]) -> str:
    """The HTML page for a ``collect`` context."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("benchkit", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["literals"] = _literals
    return env.get_template("report.html.j2").render(**context)


def write_report(results_dir: Path, out_root: Path | None = None, out: Path | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for a results directory; returns its path."""
    if not Path(results_dir).is_dir():
        raise ConfigError(f"results directory {str(results_dir)!r} does not exist")
    path = Path(out) if out is not None else Path(results_dir) / REPORT_FILE
    atomic_write_text(path, render(collect(results_dir, out_root)))
    return path
