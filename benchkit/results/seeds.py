"""Training-seed statistics: rows that carry the uncertainty of retraining, significance over training seeds, and
how stable each row's rank is.

A model trained with ``train.seeds = N`` is N ordinary runs that differ only in their seed (initialisation, data
order, masks and, unless ``train.tokenizer_per_seed = false``, the tokenizer). Each run's rows stay in ``rows.jsonl``;
:func:`aggregate_seeds` folds the rows of one model config at one sampling setting into one table row:

- ``fid`` is the mean over training seeds, ``fid_sd`` the standard deviation (ddof 1), ``fid_ci95`` the half-width
  of the 95% confidence interval of the mean (Student t with n - 1 degrees of freedom), ``n_seeds`` the number of
  seeds; the same for ``kid_mean`` (``kid_mean_sd``, ``kid_mean_ci95``) and ``class_acc``.
- :func:`seed_significance` compares each row with the next one of the FID-sorted table by Welch's t-test over the
  two rows' per-seed FIDs (unequal variances), and corrects the p-values of those k - 1 comparisons together by
  Holm's step-down method: ``fid_gap_p`` is the adjusted p-value, ``fid_gap_significant`` ``yes`` when it is below
  0.05. Rows with fewer than two seeds cannot be tested (``-``).
- :func:`rank_stability` resamples each row's seeds with replacement (bootstrap), re-ranks the rows by their
  resampled mean FID, and reports how often each row keeps its rank (``rank_stability``) and the 2.5-97.5% range
  of its ranks (``rank_interval``).

Deviations: with 3 seeds a t interval is wide (t = 4.30) and a bootstrap over 3 values can only produce 10 distinct
means, so both are coarse; they are what 3 trainings support, and the table says how many seeds each row has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from benchkit.metrics.health import is_failing
from benchkit.results.convergence import with_improving
from benchkit.results.significance import with_significance

SEED_METRICS = ("fid", "kid_mean", "class_acc")
# A generator row names its model config without the seed in ``model``; these columns add the sampling setting.
HEALTH_WORST = {
    "token_std_ratio_max": "max",
    "token_out_of_range": "max",
    "token_nonfinite": "max",
    "token_std_ratio_min": "min",
    "sample_distinct": "min",
    "sample_pixel_std": "min",
}
SETTING = ("steps", "cfg", "cfg_schedule", "temperature", "diffusion_steps")
ALPHA = 0.05


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, standard deviation, half-width of the ``level`` Student-t interval of the mean) of ``values``;
    standard deviation and half-width are NaN for fewer than two values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return float(x.mean()), sd, half


def comparison_group(df: pd.DataFrame) -> pd.Series:
    """Each row's comparison group, ``protocol / reference / features``: numbers compare only within one
    (docs/evaluation.md). Rows written before these labels existed are ``benchkit`` against
    ``<dataset>-test-<n_ref>``, what they were scored against."""

    def col(name: str) -> pd.Series:
        return df[name] if name in df.columns else pd.Series(None, index=df.index, dtype=object)

    n_ref = pd.to_numeric(col("n_ref"), errors="coerce").map(lambda v: "?" if pd.isna(v) else str(int(v)))
    legacy = col("dataset").fillna("?").astype(str) + "-test-" + n_ref
    parts = (col("protocol").fillna("benchkit"), col("reference").fillna(legacy), col("features").fillna("?"))
    return parts[0].astype(str) + " / " + parts[1].astype(str) + " / " + parts[2].astype(str)


def aggregate_seeds(df: pd.DataFrame, key: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per model config and sampling setting, with mean, sd, 95% CI and ``n_seeds`` of each seed metric.

    ``key`` names the grouping columns (default: ``model``, the model's fingerprint without its seed, and the
    sampling setting; rows without ``model``, written before training seeds existed, stay one row each). Other
    columns take the lowest seed's value; ``fid_seeds`` lists the per-seed FIDs in seed order, for the significance
    test and the rank bootstrap.
    """
    if df.empty or "n_seeds" in df.columns:  # already folded
        return df
    df = df.copy()
    if key is None:  # the seeds of one model and setting in one comparison group: never an ADM row with another
        df["_group"] = comparison_group(df)
        key = ["model", *(c for c in SETTING if c in df.columns), "_group"] if "model" in df.columns else []
    if "model" in key:  # old rows: their own group
        df["model"] = df["model"].fillna(
            df["row_id"] if "row_id" in df.columns else pd.Series(df.index, index=df.index).astype(str)
        )
    elif not key:
        key = ["_row"]
        df["_row"] = range(len(df))
    order = df.sort_values("seed", kind="mergesort") if "seed" in df.columns else df
    rows = []
    for _, group in order.groupby(list(key), dropna=False, sort=False):
        row = group.iloc[0].to_dict()
        for metric in SEED_METRICS:
            if metric not in group.columns:
                continue
            values = pd.to_numeric(group[metric], errors="coerce").tolist()
            mean, sd, half = t_interval(values)
            row.update({metric: mean, f"{metric}_sd": sd, f"{metric}_ci95": half})
        fids = pd.to_numeric(group["fid"], errors="coerce") if "fid" in group.columns else pd.Series(dtype=float)
        row["fid_seeds"] = [float(v) for v in fids if math.isfinite(v)]
        row["n_seeds"] = len(row["fid_seeds"]) if "fid" in group.columns else len(group)
        row.update(_worst_health(group))
        row.pop("_row", None)
        row.pop("_group", None)  # a grouping key of this function, not a column
        rows.append(row)
    return pd.DataFrame(rows)


def _worst_health(group: pd.DataFrame) -> dict[str, Any]:
    """The sample-health fields of a model over its seeds: the worst verdict (a failing seed marks the row, it is
    never hidden under the first seed's), the worst of each figure, and ``health_seeds`` ("1/3 failed")."""
    if "health" not in group.columns:
        return {}
    failing = [i for i, v in enumerate(group["health"]) if is_failing(v)]
    out: dict[str, Any] = {"health_seeds": f"{len(failing)}/{len(group)} failed" if failing else None}
    if failing:
        first = group.iloc[failing[0]]
        seed = first.get("seed")
        out["health"] = first["health"]
        out["health_reason"] = f"seed {seed}: {first.get('health_reason')}"
    for col, worst in HEALTH_WORST.items():
        if col in group.columns:
            values = pd.to_numeric(group[col], errors="coerce")
            out[col] = values.max() if worst == "max" else values.min()
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (NaN stays NaN and is not counted as a comparison)."""
    p = np.asarray(pvalues, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), np.nan)
    m = len(valid)
    running = 0.0
    for rank, idx in enumerate(valid[np.argsort(p[valid], kind="mergesort")]):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out.tolist()


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test that ``a`` and ``b`` have the same mean (NaN with < 2 values in either
    or no variance at all)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) < 2 or len(y) < 2 or (x.std() == 0 and y.std() == 0):
        return math.nan
    return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


def seed_significance(df: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """``df`` (aggregated, with ``fid_seeds``) plus ``fid_gap_p`` (Holm-adjusted Welch p-value against the next row
    by mean FID) and ``fid_gap_significant`` (``yes`` / ``no`` / None)."""
    if "fid_seeds" not in df.columns or df.empty:
        return df
    order = pd.to_numeric(df["fid"], errors="coerce").sort_values(kind="mergesort", na_position="last").index
    pairs = list(zip(order[:-1], order[1:]))
    raw = [welch_p(df.at[a, "fid_seeds"], df.at[b, "fid_seeds"]) for a, b in pairs]
    adjusted = holm(raw)
    out = df.copy()
    out["fid_gap_p"] = np.nan
    out["fid_gap_significant"] = None
    for (a, _), p in zip(pairs, adjusted):
        if not math.isnan(p):
            out.at[a, "fid_gap_p"] = p
            out.at[a, "fid_gap_significant"] = "yes" if p < alpha else "no"
    return out


def rank_stability(df: pd.DataFrame, rounds: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per row of an aggregated table: ``rank`` (1 = lowest mean FID), ``rank_stability`` (share of bootstrap
    rounds in which it keeps that rank) and ``rank_interval`` (2.5-97.5% range of its bootstrap ranks, "a-b")."""
    if "fid_seeds" not in df.columns or df.empty:
        return df
    seeds = [np.asarray(v, dtype=np.float64) for v in df["fid_seeds"]]
    usable = [i for i, v in enumerate(seeds) if len(v) > 0]
    out = df.copy()
    if not usable:
        return out
    rng = np.random.default_rng(seed)
    means = np.stack([np.array([rng.choice(seeds[i], len(seeds[i])).mean() for i in usable]) for _ in range(rounds)])
    ranks = means.argsort(axis=1, kind="stable").argsort(axis=1, kind="stable") + 1  # [rounds, rows]
    observed = np.array([seeds[i].mean() for i in usable]).argsort(kind="stable").argsort(kind="stable") + 1
    out["rank"], out["rank_stability"], out["rank_interval"] = None, np.nan, None
    for j, i in enumerate(usable):
        label = out.index[i]
        lo, hi = np.percentile(ranks[:, j], [2.5, 97.5], method="nearest")
        out.at[label, "rank"] = int(observed[j])
        out.at[label, "rank_stability"] = float((ranks[:, j] == observed[j]).mean())
        out.at[label, "rank_interval"] = f"{int(lo)}-{int(hi)}" if lo != hi else str(int(lo))
    return out


def table_rows(gen: pd.DataFrame) -> pd.DataFrame:
    """The generator table: rows folded over training seeds (``aggregate_seeds``), ``still_improving`` judged per
    seed and reported for the first, then significance: over training seeds (``seed_significance`` and
    ``rank_stability``) when some row has two or more, else by the sampling spread as before. Within each comparison
    group (in order of first appearance) the rows are in order of (mean) FID, rows without one last."""
    if gen.empty or "n_seeds" in gen.columns:  # empty, or already this table
        return gen
    agg = aggregate_seeds(with_improving(gen))
    groups = [part for _, part in agg.groupby(comparison_group(agg), sort=False)]  # ranks and tests per group
    by_fid = [p.iloc[np.argsort(pd.to_numeric(p["fid"], errors="coerce").to_numpy(), kind="stable")] for p in groups]
    if (pd.to_numeric(agg["n_seeds"], errors="coerce") >= 2).any():
        return pd.concat([rank_stability(seed_significance(part)) for part in by_fid])
    return pd.concat([with_significance(part) for part in by_fid])
