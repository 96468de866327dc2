"""Convergence: a cheap FID and KID of a generator at several points of its training, and the table's mark of
whether it was still improving at the end.

With ``train.convergence_points = P`` the trainer stops after steps ``steps / 2^(P-1), ..., steps / 2, steps``
(each point at twice the previous one's steps), and this module's hook draws ``train.convergence_samples`` samples
with the eval (EMA) weights and the run's base sampling setting, and scores them against the test reference with
the run's feature network: FID (:func:`benchkit.metrics.quality.frechet_distance` on the cached reference
statistics), KID (clean-fid's, as in the table) and a bootstrap standard deviation of that FID
(:func:`benchkit.significance.bootstrap_fid_std`). Each point is a row of ``<run dir>/convergence.json``
(step, images_seen, train_flops, fid, kid, fid_bootstrap_std, n_samples, seconds); a resumed run keeps the points
it already has. The evaluation runs on a copy of the model under a forked RNG (``benchkit.trainer.fit``), so the
trained weights are bitwise those of a run without convergence points.

Deviations:
- These FIDs use far fewer samples than the table's (FID is biased upwards at small N), so they are comparable with
  each other, not with the table's ``fid``.
- ``still_improving`` uses as noise the larger of the row's seed spread (measured at the table's sample count) and
  the bootstrap standard deviation of the last two points' FIDs (at the convergence sample count), since a
  difference between two small-N FIDs is noisier than the seed spread of a large-N one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from benchkit.config import RunConfig
from benchkit.files import atomic_write_text

log = logging.getLogger(__name__)

FILE = "convergence.json"
MARK = "still_improving"
ROW_KEYS = ("convergence_fid", "convergence_fid_prev", "convergence_fid_noise")


def convergence_steps(total: int, points: int) -> list[int]:
    """``points`` step counts ending at ``total``, each twice the previous one (rounded; repeats dropped)."""
    if points < 0 or total < 1:
        raise ValueError(f"need points >= 0 and total >= 1, got {points} and {total}")
    return sorted({max(1, round(total / 2**k)) for k in range(points)})


def read_points(run_dir: Path) -> list[dict[str, Any]]:
    """The stored points of a run, by step (empty when it has none)."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return []
    return sorted(json.loads(path.read_text())["points"], key=lambda r: r["step"])


def store_point(run_dir: Path, point: dict[str, Any]) -> list[dict[str, Any]]:
    """Add ``point`` to the run's file, replacing a point of the same step (a step redone after a resume)."""
    points = [p for p in read_points(run_dir) if p["step"] != point["step"]] + [point]
    points.sort(key=lambda r: r["step"])
    atomic_write_text(Path(run_dir) / FILE, json.dumps({"points": points}, indent=1) + "\n")
    return points


def convergence_hook(cfg: RunConfig, tokenizer: nn.Module, kind: str, num_classes: int, train: Any,
                     test: Any, run_dir: Path, step_flops: int) -> Callable[[nn.Module, int], None]:
    """``evaluate(model, step)`` for :func:`benchkit.trainer.fit`: scores one point and stores it."""
    from benchkit.evaluate import _extractor, cache_dir
    from benchkit.metrics.quality import cleanfid_kid, feature_stats, frechet_distance, reference_stats
    from benchkit.sampling import balanced_labels, generate_images
    from benchkit.significance import bootstrap_fid_std

    extractor = _extractor(cfg, train)
    real = test.images[: cfg.eval.num_reference]
    ref = reference_stats(real, extractor, cache_dir=cache_dir(cfg), ref_key=f"{cfg.data.name}-test-{len(real)}")
    n = cfg.train.convergence_samples
    labels = balanced_labels(n, num_classes)
    setting = cfg.sample.settings()

    def evaluate(model: nn.Module, step: int) -> None:
        t0 = time.perf_counter()
        fake = generate_images(model, tokenizer, kind, labels, setting, seed=cfg.seed,  # type: ignore[arg-type]
                               batch_size=cfg.sample.batch_size)
        feats = extractor.features(fake)
        fid = frechet_distance(*feature_stats(feats), ref.mu, ref.sigma)
        kid = cleanfid_kid(feats.numpy(), ref.feats.numpy(), min(1000, n, len(real)), cfg.seed)
        spread = bootstrap_fid_std(feats, ref.mu, ref.sigma, seed=cfg.seed)
        point = {"step": step, "images_seen": step * cfg.train.batch_size, "train_flops": step * step_flops,
                 "fid": fid, "kid": kid, "fid_bootstrap_std": spread,
                 "n_samples": n, "features": extractor.tag, "seconds": round(time.perf_counter() - t0, 3)}
        store_point(run_dir, point)
        log.info("%s: step %d, FID %.2f  KID %.4f (%d samples, %.1f s)", Path(run_dir).name, step, fid, kid, n,
                 point["seconds"])

    return evaluate


def row_fields(run_dir: Path) -> dict[str, Any]:
    """The table's convergence values of a run: last point's FID, the one before, and their bootstrap noise."""
    points = read_points(run_dir)
    if not points:
        return {}
    last, prev = points[-1], points[-2] if len(points) > 1 else None
    noise = max(float(p.get("fid_bootstrap_std", math.nan)) for p in points[-2:])
    return {"convergence_fid": last["fid"], "convergence_fid_prev": prev["fid"] if prev else None,
            "convergence_fid_noise": noise}


def improving_marks(df: pd.DataFrame) -> pd.Series:
    """Per row: ``yes`` when the last convergence FID is below the one before by more than the noise (the larger
    of the row's seed spread, or its run's, and the points' bootstrap std), ``no`` when not, None when unknown."""
    from benchkit.significance import _noise

    if not set(ROW_KEYS[:2]) <= set(df.columns):
        return pd.Series(None, index=df.index, dtype=object)
    last = pd.to_numeric(df["convergence_fid"], errors="coerce")
    prev = pd.to_numeric(df["convergence_fid_prev"], errors="coerce")
    spread = _noise(df, "seed_spread_fid")
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


def convergence_series(df: pd.DataFrame, out_root: Path) -> dict[str, list[tuple[float, float]]]:
    """``{tokenizer+generator+head: [(train_flops, fid), ...]}`` from the convergence files of the generator runs
    in ``df`` (under ``out_root/runs``); a label shared by several runs gets the run name appended."""
    if "run" not in df.columns:
        return {}
    gen = df[df["kind"] != "tokenizer"] if "kind" in df.columns else df
    runs = gen.drop_duplicates("run")
    labels = ["+".join(str(r.get(k)) for k in ("tokenizer", "generator", "head")) for _, r in runs.iterrows()]
    out: dict[str, list[tuple[float, float]]] = {}
    for label, run in zip(labels, runs["run"]):
        points = read_points(Path(out_root) / "runs" / str(run))
        if points:
            key = label if labels.count(label) == 1 else f"{label} ({run})"
            out[key] = [(float(p["train_flops"]), float(p["fid"])) for p in points]
    return out
