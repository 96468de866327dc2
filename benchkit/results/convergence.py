"""The table's ``still_improving`` mark and the convergence plot's series, from the points that
``benchkit.training.convergence`` stored in each run directory (see its docstring for what a point is)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from benchkit.results.significance import noise_of
from benchkit.training.convergence import ROW_KEYS, read_points

MARK = "still_improving"


def improving_marks(df: pd.DataFrame) -> pd.Series:
    """Per row: ``yes`` when the last convergence FID is below the one before by more than the noise (the larger
    of the row's seed spread, or its run's, and the points' bootstrap std), ``no`` when not, None when unknown."""
    if not set(ROW_KEYS[:2]) <= set(df.columns):
        return pd.Series(None, index=df.index, dtype=object)
    last = pd.to_numeric(df["convergence_fid"], errors="coerce")
    prev = pd.to_numeric(df["convergence_fid_prev"], errors="coerce")
    spread = noise_of(df, "seed_spread_fid")
    boot = pd.to_numeric(df["convergence_fid_noise"], errors="coerce") if ROW_KEYS[2] in df else spread * math.nan
    noise = pd.concat([spread, boot], axis=1).max(axis=1, skipna=True)
    known = ~(last.isna() | prev.isna() | noise.isna())
    values = [("yes" if p - v > e else "no") if k else None for v, p, e, k in zip(last, prev, noise, known)]
    return pd.Series(values, index=df.index, dtype=object)


def with_improving(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` plus the ``still_improving`` column when some row has convergence points (else ``df`` as is)."""
    if "convergence_fid" not in df.columns or df.empty:
        return df
    return df.assign(**{MARK: improving_marks(df)})


def convergence_series(df: pd.DataFrame, out_root: Path) -> dict[str, list[tuple[float, ...]]]:
    """``{tokenizer+generator+head: [(train_flops, fid, low, high), ...]}`` from the convergence files of the
    generator runs in ``df`` (under ``out_root/runs``). The training seeds of one model (same ``model``) make one
    series: the mean FID at each point and the lowest and highest seed's, the band the plot shades. A label shared
    by several models gets the first run's name appended."""
    if "run" not in df.columns:
        return {}
    gen = df[df["kind"] != "tokenizer"] if "kind" in df.columns else df
    runs = gen.drop_duplicates("run")
    models = runs["model"].fillna(runs["run"]) if "model" in runs.columns else runs["run"]
    groups: dict[str, list[tuple[str, str]]] = {}
    for (_, r), model in zip(runs.iterrows(), models):
        label = "+".join(str(r.get(k)) for k in ("tokenizer", "generator", "head"))
        groups.setdefault(str(model), []).append((label, str(r["run"])))
    labels = [members[0][0] for members in groups.values()]
    out: dict[str, list[tuple[float, ...]]] = {}
    for members in groups.values():
        label, first = members[0]
        per_seed = [read_points(Path(out_root) / "runs" / run) for _, run in members]
        per_seed = [p for p in per_seed if p]
        if not per_seed:
            continue
        n = min(len(p) for p in per_seed)  # a seed still training has fewer points
        key = label if labels.count(label) == 1 else f"{label} ({first})"
        out[key] = []
        for i in range(n):
            fids = [float(p[i]["fid"]) for p in per_seed]
            out[key].append((float(per_seed[0][i]["train_flops"]), sum(fids) / len(fids), min(fids), max(fids)))
    return out
