"""The results store (``rows.jsonl``), filters, sorting and the generator / tokenizer tables.

A results directory holds ``rows.jsonl``: one JSON object per line, one evaluated row per object. Rows are
flat dicts (see ``IDENTITY``, ``QUALITY`` and ``COST`` below for the usual keys; unknown keys are kept).
Writers only ever append, under a file lock, so several processes (sweep shards, DDP ranks, machines on a
shared file system) can write into one directory. A row whose ``row_id`` already exists replaces the
older one logically: readers keep the LAST occurrence of each ``row_id``. A model evaluated again under another
tuning (``eval.tune``) is listed at the setting the latest tuning chose (``tuning_selection``).

Deviations:
- No database: an append-only JSON-lines file is diffable, greppable and survives partial writes
  (a truncated last line is skipped with a warning, and the next append starts on a fresh line).
- Markdown and LaTeX tables are written by small local functions, not pandas ``to_markdown`` /
  ``to_latex``, which need the optional ``tabulate`` and ``jinja2`` packages.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import operator
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock
from rich.table import Table

from benchkit.core.errors import ConfigError, suggest
from benchkit.core.files import atomic_write_text
from benchkit.metrics.health import COLLAPSED_STD_RATIO, DISTINCT_MIN, DIVERGED_STD_RATIO, OUT_OF_RANGE_MAX, is_failing
from benchkit.results.seeds import table_rows

log = logging.getLogger(__name__)

ROWS_FILE = "rows.jsonl"
SELECTION = "tuning_selection"  # kind of the records that name the current tuned rows of a model
TABLE_FILES_CSV = ("table.csv", "tokenizers.csv")

# Column groups, in table order: who (identity), how good (quality), what it cost (cost), where from.
IDENTITY = (
    "run",
    "dataset",
    "tokenizer",
    "grid",
    "generator",
    "head",
    "features",
    "steps",
    "cfg",
    "cfg_schedule",
    "temperature",
    "diffusion_steps",
    "head_deviations",
    "n_samples",
    "seed",
)
QUALITY = (
    "fid",
    "fid_ci95",
    "fid_sd",
    "n_seeds",
    "fid_gap_significant",
    "fid_gap_p",
    "rank",
    "rank_interval",
    "rank_stability",
    "fid_cleanfid",
    "fid_rel_diff",
    "fid_invalid",
    "health",
    "health_seeds",
    "health_reason",
    "token_std_ratio_max",
    "token_std_ratio_min",
    "token_out_of_range",
    "token_nonfinite",
    "sample_distinct",
    "sample_pixel_std",
    "fid_inf",
    "seed_spread_fid",
    "is_mean",
    "is_std",
    "kid_mean",
    "kid_mean_ci95",
    "kid_std",
    "precision",
    "recall",
    "class_acc",
    "class_acc_ci95",
    "convergence_fid",
    "still_improving",
)
DETAIL = ("convergence_fid_prev", "convergence_fid_noise", "fid_seeds", "model")  # in the CSV only
TOKENIZER_QUALITY = ("rfid", "rfid_invalid", "psnr", "ssim", "lpips", "codebook_usage", "perplexity", "bits_per_image")
COST = (
    "params",
    "backbone_params",
    "flops_per_image",
    "images_per_s",
    "sample_batch_size",
    "latency_s",
    "encode_images_per_s",
    "decode_images_per_s",
    "train_images_per_s",
    "train_lr",
    "train_steps",
    "train_flops",
    "train_time_s",
    "peak_mem_mb",
)
PROVENANCE = (
    "row_id",
    "tuned_in",
    "tuned_on_seed",
    "seed_index",
    "config_fingerprint",
    "git_sha",
    "timestamp",
    "device",
)
INT_COLUMNS = (
    "steps",
    "n_samples",
    "seed",
    "params",
    "backbone_params",
    "flops_per_image",
    "sample_batch_size",
    "train_steps",
    "train_flops",
    "diffusion_steps",
    "n_ref",
    "isc_splits",
    "kid_subset_size",
    "n_seeds",
    "rank",
)
# Decimals shown per column; other float columns get 4.
DECIMALS = {
    "cfg": 2,
    "temperature": 2,
    "fid": 2,
    "fid_ci95": 2,
    "fid_sd": 2,
    "fid_gap_p": 3,
    "rank_stability": 2,
    "kid_mean_ci95": 4,
    "class_acc_ci95": 3,
    "fid_cleanfid": 2,
    "fid_rel_diff": 3,
    "token_std_ratio_max": 3,
    "token_std_ratio_min": 3,
    "token_out_of_range": 4,
    "token_nonfinite": 6,
    "sample_distinct": 3,
    "sample_pixel_std": 2,
    "fid_inf": 2,
    "seed_spread_fid": 2,
    "is_mean": 2,
    "is_std": 2,
    "kid_mean": 4,
    "kid_std": 4,
    "precision": 3,
    "recall": 3,
    "class_acc": 3,
    "convergence_fid": 2,
    "rfid": 2,
    "psnr": 2,
    "ssim": 3,
    "lpips": 3,
    "codebook_usage": 3,
    "perplexity": 1,
    "bits_per_image": 1,
    "images_per_s": 1,
    "latency_s": 4,
    "encode_images_per_s": 1,
    "decode_images_per_s": 1,
    "train_images_per_s": 1,
    "train_time_s": 1,
    "peak_mem_mb": 1,
}
# shown as 1.23M / 4.56G in markdown, LaTeX and the terminal
HUMAN_COLUMNS = ("params", "backbone_params", "flops_per_image", "train_flops")


# ------------------------------------------------------------------------------------------------ the store
def _clean(value: Any) -> Any:
    """Make a value strict-JSON: numpy/torch scalars -> Python, NaN/inf -> None, Path -> str, tuple -> list."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):
        return _clean(value.tolist())  # numpy / torch scalars and arrays
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def append_row(results_dir: Path, row: dict[str, Any]) -> None:
    """Append one row to ``results_dir/rows.jsonl``; safe with several concurrent writer processes."""
    if not isinstance(row, dict):
        raise TypeError(f"a row must be a dict, got {type(row).__name__}")
    if row.get("row_id") is not None and not isinstance(row["row_id"], str):
        raise TypeError(f"row_id must be a str, got {type(row['row_id']).__name__}")
    line = json.dumps(_clean(row), allow_nan=False, sort_keys=False) + "\n"
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / ROWS_FILE
    with FileLock(str(path) + ".lock"):
        data = line.encode("utf-8")
        # A writer that died mid-line leaves no trailing newline: start on a fresh line so both survive parsing.
        if path.exists() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def _iter_rows(results_dir: Path) -> list[dict[str, Any]]:
    """All parseable rows in file order (duplicates included); bad lines are skipped with a warning."""
    path = Path(results_dir) / ROWS_FILE
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    complete = text.endswith("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            is_last = i == len(lines) - 1 and not complete
            what = "truncated last line" if is_last else f"unreadable line {i + 1}"
            log.warning("%s: skipping %s (a writer was probably interrupted)", path, what)
            continue
        if not isinstance(obj, dict):
            log.warning("%s: skipping line %d, not a JSON object", path, i + 1)
            continue
        rows.append(obj)
    return rows


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last occurrence of each row_id, at the position of that last occurrence."""
    last = {r["row_id"]: i for i, r in enumerate(rows) if r.get("row_id") is not None}
    return [r for i, r in enumerate(rows) if r.get("row_id") is None or last[r["row_id"]] == i]


def tuning_selection(key: str, chosen: list[str]) -> dict[str, Any]:
    """The record naming the rows that the latest tuning of one model and evaluation (``key``) chose: rows with
    the same ``tuned_in`` key that it does not name were chosen by an earlier tuning (another grid or sample
    count) and are left out of the tables, so a re-tuned model is not listed twice at different settings."""
    return {"row_id": f"selection-{key}", "kind": SELECTION, "selection_key": key, "chosen": list(chosen)}


def _current(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` without the selection records and without tuned rows that a later tuning replaced."""
    chosen = {r.get("selection_key"): set(r.get("chosen") or ()) for r in rows if r.get("kind") == SELECTION}
    return [
        r
        for r in rows
        if r.get("kind") != SELECTION
        and not (r.get("tuned_in") in chosen and r.get("row_id") not in chosen[r.get("tuned_in")])
    ]


def read_rows(results_dir: Path) -> pd.DataFrame:
    """All current rows of ``results_dir/rows.jsonl`` as a DataFrame: the last occurrence of each row_id wins, and
    tuned rows that a later tuning of the same model replaced are left out (:func:`tuning_selection`)."""
    rows = _current(_dedupe(_iter_rows(results_dir)))
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    return _int_columns(df).reset_index(drop=True)


def _int_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Known integer columns (steps, params, ...) as nullable Int64 when missing values made them float."""
    out = df
    for col in INT_COLUMNS:
        if col in df.columns and pd.api.types.is_float_dtype(df[col]):
            values = df[col].dropna()
            if (values == values.round()).all():
                out = out if out is not df else df.copy()
                out[col] = df[col].astype("Int64")
    return out


def has_row(results_dir: Path, row_id: str) -> bool:
    """Whether a row with this row_id is already stored (lets sweeps skip finished work)."""
    return any(r.get("row_id") == row_id for r in _iter_rows(results_dir))


def compact_rows(results_dir: Path) -> int:
    """Rewrite rows.jsonl without superseded duplicates and bad lines; return the number of rows kept."""
    path = Path(results_dir) / ROWS_FILE
    with FileLock(str(path) + ".lock"):
        rows = _dedupe(_iter_rows(results_dir))
        atomic_write_text(path, "".join(json.dumps(_clean(r), allow_nan=False) + "\n" for r in rows))
    return len(rows)


# ---------------------------------------------------------------------------------------- filter and sort
_FILTER = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(==|!=|>=|<=|=|<|>)\s*(.*?)\s*$")
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _unknown_column(col: str, df: pd.DataFrame) -> ConfigError:
    cols = [str(c) for c in df.columns]
    return ConfigError(f"unknown column {col!r}; valid: {', '.join(cols) or '(no rows yet)'}{suggest(col, cols)}")


def filter_rows(df: pd.DataFrame, filters: Iterable[str]) -> pd.DataFrame:
    """Rows matching every filter, e.g. ``["head=ce", "generator!=ar", "fid<50"]`` (ops: = == != < <= > >=)."""
    for spec in filters:
        m = _FILTER.match(spec)
        if m is None:
            raise ConfigError(
                f"bad filter {spec!r}; write COLUMN OP VALUE with OP one of "
                f"{', '.join(_OPS)}, e.g. 'head=ce' or 'fid<50'"
            )
        col, op, raw = m.groups()
        if col not in df.columns:
            raise _unknown_column(col, df)
        series = df[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"filter {spec!r}: column {col!r} is numeric, {raw!r} is not a number") from None
            mask = _OPS[op](series.astype("float64"), value).fillna(False)
        else:
            if op not in ("=", "==", "!="):
                raise ConfigError(f"filter {spec!r}: column {col!r} is not numeric; use = or != with it")
            text = series.map(lambda v: "" if _missing(v) else str(v).lower() if isinstance(v, bool) else str(v))
            mask = _OPS[op](text, raw.lower() if raw.lower() in ("true", "false") else raw)
        df = df[mask.astype(bool)]
    return df


def sort_rows(df: pd.DataFrame, by: str, descending: bool = False) -> pd.DataFrame:
    """Rows sorted by one column (stable; missing values last)."""
    if by not in df.columns:
        raise _unknown_column(by, df)
    return df.sort_values(by, ascending=not descending, na_position="last", kind="mergesort")


# --------------------------------------------------------------------------------------------------- tables
def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # lists and dicts
        return False


def split_kinds(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(generator rows, tokenizer rows); rows without a ``kind`` count as generator rows."""
    if "kind" not in df.columns:
        return df, df.iloc[0:0]
    is_tok = (df["kind"] == "tokenizer").fillna(False).astype(bool)
    return df[~is_tok], df[is_tok]


def table_columns(df: pd.DataFrame, *, kind: str = "generator", provenance: bool = True) -> list[str]:
    """Columns in table order (identity, quality, cost, others, provenance), dropping all-empty ones and ``kind``."""
    quality = (*TOKENIZER_QUALITY, *QUALITY) if kind == "tokenizer" else (*QUALITY, *TOKENIZER_QUALITY)
    known = [*IDENTITY, *quality, *COST]
    tail = list(PROVENANCE) if provenance else []
    extras = [c for c in df.columns if c not in (*known, *PROVENANCE, "kind")]
    order = [c for c in [*known, *extras, *tail] if c in df.columns]
    return [c for c in order if not df[c].map(_missing).all()]


def _round(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].round(DECIMALS.get(col, 4))
    return out


def human_number(v: float, spec: str = ".3g") -> str:
    """``v`` with an SI suffix, the mantissa in format ``spec``: 4.5e12 -> ``4.5T``, 447552 -> ``448K``."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:{spec}}{unit}"
    return f"{v:g}"


def _cell(v: Any, col: str) -> str:
    """One value as display text."""
    if _missing(v):
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if col in HUMAN_COLUMNS and isinstance(v, numbers.Real):  # numpy scalars included
        return human_number(float(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.{DECIMALS.get(col, 4)}f}"
    return str(v)


def _display(df: pd.DataFrame, kind: str) -> tuple[list[str], list[list[str]], list[bool]]:
    """(header, rows of text, right-align flags) for the human-readable tables (no provenance columns)."""
    cols = [c for c in table_columns(df, kind=kind, provenance=False) if c not in DETAIL]
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in cols]
    rows = [[_cell(v, c) for v, c in zip(rec, cols)] for rec in df[cols].itertuples(index=False, name=None)]
    return cols, rows, numeric


def _notes(df: pd.DataFrame) -> list[str]:
    notes = []
    if "features" in df.columns and not df["features"].map(_missing).all():
        tags = sorted({str(v) for v in df["features"] if not _missing(v)})
        notes.append(f"FID/IS/KID/precision/recall computed on features: {', '.join(tags)}.")
    if "seed_spread_fid" in df.columns and not df["seed_spread_fid"].map(_missing).all():
        notes.append(
            "seed_spread_fid is the FID spread between seeds of the same config; "
            "FID differences smaller than it are noise."
        )
    if "fid_gap_significant" in df.columns:
        notes.append(
            "fid_gap_significant: whether a row's FID beats the next-best row's by more than the larger "
            "seed spread of the two (yes / no = within noise / - = not measurable)."
        )
    if "still_improving" in df.columns:
        notes.append(
            "still_improving: whether the model's FID at its last convergence point beats the one before "
            "by more than the noise (yes / no / - = no points); convergence_fid is that last FID, at a "
            "small sample count."
        )
    if "health" in df.columns:
        notes.append(
            "health: the sample health check of each row's sampled tokens against the training tokens (ok / "
            f"diverged: non-finite values, a channel's std over {DIVERGED_STD_RATIO:g}x the training std or over "
            f"{OUT_OF_RANGE_MAX:.0%} of the values well outside the training range / collapsed: a channel's std under "
            f"{COLLAPSED_STD_RATIO:g}x, under {DISTINCT_MIN:.0%} distinct samples or near-constant images); "
            "token_std_ratio_max/min, token_out_of_range, token_nonfinite, sample_distinct and sample_pixel_std "
            "are its figures."
        )
        failing = [r for r in df.to_dict(orient="records") if is_failing(r.get("health"))]
        setting = ("steps", "cfg", "cfg_schedule", "temperature", "diffusion_steps")
        if failing:
            notes.append(
                f"WARNING: {len(failing)} row(s) failed the sample health check; their samples are numerically "
                "meaningless and their FID compares nothing: "
                + "; ".join(
                    f"{r.get('run', '?')} ["
                    + " ".join(f"{k}={r[k]}" for k in setting if not _missing(r.get(k)))
                    + f"] {r['health']}"
                    + ("" if _missing(r.get("health_reason")) else f" ({r['health_reason']})")
                    for r in failing
                )
                + "."
            )
    if "head_deviations" in df.columns:
        notes.append(
            "head_deviations: head settings that differ from the paper's method (MAR: learned variance, "
            "no x_0 clipping, 100 DDPM steps; full-softmax cross-entropy)."
        )
    return notes


def _text_frame(df: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, list[str]]:
    """The display text of every cell as a DataFrame, and tabulate's column alignment (numbers right)."""
    cols, rows, numeric = _display(df, kind)
    return pd.DataFrame(rows, columns=cols), ["right" if n else "left" for n in numeric]


def to_markdown(df: pd.DataFrame, *, kind: str = "generator") -> str:
    """A GitHub-flavoured markdown table (pandas ``to_markdown``, i.e. tabulate), numbers right-aligned, then notes."""
    text, align = _text_frame(df, kind)
    text = text.map(lambda c: c.replace("|", "\\|"))
    table = text.to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True)
    notes = _notes(df)
    return table + "\n" + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")


def to_latex(df: pd.DataFrame, *, kind: str = "generator") -> str:
    """A LaTeX ``tabular`` with booktabs rules (``\\usepackage{booktabs}``), special characters escaped (tabulate's
    ``latex_booktabs`` format through pandas)."""
    text, align = _text_frame(df, kind)
    return text.to_markdown(index=False, tablefmt="latex_booktabs", colalign=align, disable_numparse=True) + "\n"


def write_tables(df: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Write table.{csv,md,tex} (generator rows) and, when there are any, tokenizers.{csv,md,tex}.

    The CSV has every column (rounded); markdown and LaTeX leave out provenance (row_id, git_sha, ...).
    Returns {file name: path}.
    """
    out_dir = Path(out_dir)

    gen, tok = split_kinds(df)
    gen = table_rows(gen)
    written: dict[str, Path] = {}
    for stem, kind, part in (("table", "generator", gen), ("tokenizers", "tokenizer", tok)):
        if kind == "tokenizer" and part.empty:
            continue
        part = _round(_int_columns(part))
        texts = {
            f"{stem}.csv": part[table_columns(part, kind=kind)].to_csv(index=False),
            f"{stem}.md": to_markdown(part, kind=kind),
            f"{stem}.tex": to_latex(part, kind=kind),
        }
        for name, text in texts.items():
            atomic_write_text(out_dir / name, text)
            written[name] = out_dir / name
    log.info("wrote %s to %s", ", ".join(written), out_dir)
    return written


def rich_table(df: pd.DataFrame, title: str) -> Table:
    """A rich Table for the terminal (tokenizer columns when every row is a tokenizer row)."""

    kind = "tokenizer" if "kind" in df.columns and len(df) and (df["kind"] == "tokenizer").all() else "generator"
    if kind == "generator":
        df = table_rows(df)
    cols, rows, numeric = _display(_int_columns(df), kind)
    table = Table(title=title, caption=" ".join(_notes(df)) or None)
    for i, (col, num) in enumerate(zip(cols, numeric)):
        # values are never cut; long names wrap at their underscores (seed_spread_fid -> three short lines)
        width = max([len(r[i]) for r in rows] + [max(len(part) + 1 for part in col.split("_"))])
        table.add_column(col.replace("_", "_\n"), justify="right" if num else "left", no_wrap=True, min_width=width)
    for r in rows:
        table.add_row(*r)
    return table
