"""Is an FID difference between two table rows larger than the noise of measuring FID?

Two sources of noise are supported:

- the seed spread ``seed_spread_fid`` each run records (|FID(seed) - FID(seed + 1)| of the same model and
  setting); rows of one run without their own spread (other sampling settings) use the run's;
- a bootstrap over samples (:func:`bootstrap_fid_std`): the standard deviation of FID when the generated
  features are resampled with replacement against fixed reference statistics.

:func:`adjacent_significance` marks, for each row of the table sorted by FID, whether it is better than the next
row by more than the noise of the pair (the larger of the two rows' spreads): ``yes``, ``no`` (within noise,
the order of the two rows is not established), or None (last row, or no noise estimate; tables show ``-``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchkit.core.errors import ConfigError

SIG_COLUMN = "fid_gap_significant"


def noise_of(df: pd.DataFrame, noise: str) -> pd.Series:
    """The noise of each row: its own value, else the value recorded by another row of the same run."""
    own = pd.to_numeric(df[noise], errors="coerce") if noise in df.columns else pd.Series(np.nan, index=df.index)
    if "run" in df.columns:
        by_run = own.groupby(df["run"]).transform("max")
        own = own.fillna(by_run)
    return own


def adjacent_significance(df: pd.DataFrame, *, metric: str = "fid", noise: str = "seed_spread_fid") -> pd.Series:
    """Per row: ``yes`` / ``no`` / None for "beats the next row of the metric-sorted table by more than noise"."""
    if metric not in df.columns:
        raise ConfigError(f"significance needs a {metric!r} column; valid: {', '.join(map(str, df.columns))}")
    values = pd.to_numeric(df[metric], errors="coerce")
    spread = noise_of(df, noise)
    order = values.sort_values(kind="mergesort", na_position="last").index
    marks = pd.Series(None, index=df.index, dtype=object)
    for a, b in zip(order[:-1], order[1:]):
        va, vb = values[a], values[b]
        pair = max(spread[a], spread[b]) if not (pd.isna(spread[a]) and pd.isna(spread[b])) else np.nan
        if pd.isna(va) or pd.isna(vb) or pd.isna(pair):
            continue
        marks[a] = "yes" if vb - va > pair else "no"
    return marks


def with_significance(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` plus the ``fid_gap_significant`` column when at least one pair of rows can be judged (else as is)."""
    if "fid" not in df.columns or df.empty:
        return df
    marks = adjacent_significance(df)
    if marks.isna().all():
        return df
    out = df.copy()
    out[SIG_COLUMN] = marks
    return out
