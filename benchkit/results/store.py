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
import operator
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from benchkit.core.errors import ConfigError, suggest
from benchkit.core.files import atomic_write_text
from benchkit.results.seeds import comparison_group

log = logging.getLogger(__name__)

ROWS_FILE = "rows.jsonl"
SELECTION = "tuning_selection"  # kind of the records that name the current tuned rows of a model

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
    return with_int_columns(df).reset_index(drop=True)


def with_int_columns(df: pd.DataFrame) -> pd.DataFrame:
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
            text = series.map(lambda v: "" if is_missing(v) else str(v).lower() if isinstance(v, bool) else str(v))
            mask = _OPS[op](text, raw.lower() if raw.lower() in ("true", "false") else raw)
        df = df[mask.astype(bool)]
    return df


def sort_rows(df: pd.DataFrame, by: str, descending: bool = False) -> pd.DataFrame:
    """Rows sorted by one column (stable; missing values last); by a numeric column, within each comparison group
    (``protocol / reference / features``, the groups in order of first appearance), so that numbers of different
    protocols or feature networks are never ranked against each other (the table's notes list the groups)."""
    if by not in df.columns:
        raise _unknown_column(by, df)
    group = comparison_group(df)
    if pd.api.types.is_numeric_dtype(df[by]) and group.nunique() > 1:
        order = group.map({g: i for i, g in enumerate(dict.fromkeys(group))})
        df = df.assign(_group=order).sort_values(
            ["_group", by], ascending=[True, not descending], na_position="last", kind="mergesort"
        )
        return df.drop(columns="_group")
    return df.sort_values(by, ascending=not descending, na_position="last", kind="mergesort")


# --------------------------------------------------------------------------------------------------- tables
def is_missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # lists and dicts
        return False
