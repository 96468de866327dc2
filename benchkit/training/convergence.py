"""Convergence: a cheap FID and KID of a generator at several points of its training, and the table's mark of
whether it was still improving at the end (the mark itself: ``benchkit.results.convergence``).

With ``train.convergence_points = P`` the trainer stops after steps ``steps / 2^(P-1), ..., steps / 2, steps``
(each point at twice the previous one's steps), and this module's hook draws ``train.convergence_samples`` samples
with the eval (EMA) weights and the run's base sampling setting, and scores them against the test reference with
the run's feature network: FID (:func:`benchkit.metrics.frechet.frechet_distance` on the cached reference
statistics), KID (clean-fid's, as in the table) and a bootstrap standard deviation of that FID
(:func:`benchkit.metrics.frechet.bootstrap_fid_std`). Each point is a row of ``<run dir>/convergence.json``
(step, images_seen, train_flops, fid, kid, fid_bootstrap_std, n_samples, seconds); a resumed run keeps the points
it already has. The evaluation runs on a copy of the model under a forked RNG (``benchkit.training.trainer.fit``), so
the trained weights are bitwise those of a run without convergence points.

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

from torch import nn

from benchkit.core.config import RunConfig
from benchkit.core.files import atomic_write_text
from benchkit.metrics.configured import cache_dir, config_extractor, reference_key
from benchkit.metrics.frechet import bootstrap_fid_std, feature_stats, frechet_distance
from benchkit.metrics.quality import cleanfid_kid, reference_stats
from benchkit.sampling.generate import balanced_labels, generate_images

log = logging.getLogger(__name__)

FILE = "convergence.json"
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


def convergence_hook(
    cfg: RunConfig,
    tokenizer: nn.Module,
    kind: str,
    num_classes: int,
    train: Any,
    test: Any,
    run_dir: Path,
    step_flops: int,
) -> Callable[[nn.Module, int], None]:
    """``evaluate(model, step)`` for :func:`benchkit.training.trainer.fit`: scores one point and stores it."""
    extractor = config_extractor(cfg, train)
    real = test.images[: cfg.eval.num_reference]
    ref = reference_stats(real, extractor, cache_dir=cache_dir(cfg), ref_key=reference_key(cfg, len(real)))
    n = cfg.train.convergence_samples
    labels = balanced_labels(n, num_classes)
    setting = cfg.sample.settings()

    def evaluate(model: nn.Module, step: int) -> None:
        t0 = time.perf_counter()
        fake = generate_images(
            model,
            tokenizer,
            kind,  # type: ignore[arg-type]  # a TokenKind, the combination's
            labels,
            setting,
            seed=cfg.seed,
            batch_size=cfg.sample.batch_size,
        )
        feats = extractor.features(fake)
        fid = frechet_distance(*feature_stats(feats), ref.mu, ref.sigma)
        kid = cleanfid_kid(feats.numpy(), ref.feats.numpy(), min(1000, n, len(real)), cfg.seed)
        spread = bootstrap_fid_std(feats, ref.mu, ref.sigma, seed=cfg.seed)
        point = {
            "step": step,
            "images_seen": step * cfg.train.batch_size,
            "train_flops": step * step_flops,
            "fid": fid,
            "kid": kid,
            "fid_bootstrap_std": spread,
            "n_samples": n,
            "features": extractor.tag,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        store_point(run_dir, point)
        log.info(
            "%s: step %d, FID %.2f  KID %.4f (%d samples, %.1f s)",
            Path(run_dir).name,
            step,
            fid,
            kid,
            n,
            point["seconds"],
        )

    return evaluate


def row_fields(run_dir: Path) -> dict[str, Any]:
    """The table's convergence values of a run: last point's FID, the one before, and their bootstrap noise."""
    points = read_points(run_dir)
    if not points:
        return {}
    last, prev = points[-1], points[-2] if len(points) > 1 else None
    noise = max(float(p.get("fid_bootstrap_std", math.nan)) for p in points[-2:])
    return {
        "convergence_fid": last["fid"],
        "convergence_fid_prev": prev["fid"] if prev else None,
        "convergence_fid_noise": noise,
    }
