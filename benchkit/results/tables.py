"""The generator and tokenizer tables: which columns in which order, how each value is shown, the notes under a
table, and the CSV, Markdown, LaTeX and terminal forms written from the rows of a results directory
(``benchkit.results.store``), generator rows folded over training seeds (``benchkit.results.seeds``)."""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from benchkit.core.files import atomic_write_text
from benchkit.metrics.health import COLLAPSED_STD_RATIO, DISTINCT_MIN, DIVERGED_STD_RATIO, OUT_OF_RANGE_MAX, is_failing
from benchkit.results.seeds import comparison_group, table_rows
from benchkit.results.store import is_missing, with_int_columns

log = logging.getLogger(__name__)

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
    "protocol",
    "reference",
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
    "sfid",
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
    "fd_dinov2",
    "cmmd",
    "class_acc",
    "class_acc_ci95",
    "convergence_fid",
    "still_improving",
)


DETAIL = (
    "fd_dinov2_features",
    "cmmd_features",
    "convergence_fid_prev",
    "convergence_fid_noise",
    "fid_seeds",
    "model",
)  # in the CSV only


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
    "sfid": 2,
    "fd_dinov2": 2,
    "cmmd": 3,
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
    return [c for c in order if not df[c].map(is_missing).all()]


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
    if is_missing(v):
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
    if "features" in df.columns and not df["features"].map(is_missing).all():
        tags = sorted({str(v) for v in df["features"] if not is_missing(v)})
        notes.append(f"FID/IS/KID/precision/recall computed on features: {', '.join(tags)}.")
    groups = list(dict.fromkeys(comparison_group(df))) if len(df) else []
    if len(groups) > 1:
        notes.append(
            f"Rows from {len(groups)} evaluation protocols / reference sets / feature networks ({'; '.join(groups)}): "
            "FID, sFID, IS, KID, precision/recall, FD-DINOv2 and CMMD compare only within one; sorting, ranks and "
            "significance are per group (docs/evaluation.md)."
        )
    if "seed_spread_fid" in df.columns and not df["seed_spread_fid"].map(is_missing).all():
        notes.append(
            "seed_spread_fid is the FID difference between two sampling seeds of one trained model (a model's "
            "first training seed); FID differences smaller than it are sampling noise."
        )
    # the compact terminal table leaves fid_gap_p out: rows over two or more seeds were tested the same way
    seeded = "n_seeds" in df.columns and bool((pd.to_numeric(df["n_seeds"], errors="coerce") >= 2).any())
    if seeded or ("fid_gap_p" in df.columns and not df["fid_gap_p"].map(is_missing).all()):
        notes.append(
            "fid, fid_sd, fid_ci95: mean, standard deviation and 95% t-interval half-width over n_seeds training "
            "seeds. fid_gap_significant: whether a row's FID beats the next-best row's by Welch's t-test over their "
            "training seeds, Holm-corrected over the table (fid_gap_p; yes / no / - = not testable); rank_interval "
            "and rank_stability: a bootstrap over seeds."
        )
    elif "fid_gap_significant" in df.columns:
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
                    + " ".join(f"{k}={r[k]}" for k in setting if not is_missing(r.get(k)))
                    + f"] {r['health']}"
                    + ("" if is_missing(r.get("health_reason")) else f" ({r['health_reason']})")
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
        part = _round(with_int_columns(part))
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
    cols, rows, numeric = _display(with_int_columns(df), kind)
    table = Table(title=title, caption=" ".join(_notes(df)) or None)
    for i, (col, num) in enumerate(zip(cols, numeric)):
        # values are never cut; long names wrap at their underscores (seed_spread_fid -> three short lines)
        width = max([len(r[i]) for r in rows] + [max(len(part) + 1 for part in col.split("_"))])
        table.add_column(col.replace("_", "_\n"), justify="right" if num else "left", no_wrap=True, min_width=width)
    for r in rows:
        table.add_row(*r)
    return table
