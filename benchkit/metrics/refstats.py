"""FID against reference statistics stored in a file, with samples streamed through the feature network.

The file is an ``.npz`` holding ``mu`` [D] and ``sigma`` [D, D] of the reference images' features: the format of
the ADM reference batches (``VIRTUAL_imagenet256_labeled.npz``: its ``arr_0`` images, ``arr_1`` labels and sFID
statistics ``mu_s``/``sigma_s`` are never read; ``eval.protocol = "adm"``, ``benchkit.evaluation.protocols``, uses
them all) and of clean-fid's custom statistics (``np.savez(path, mu=..., sigma=...)``). ``save_reference_stats``
writes one from images. The features must come from the network the file was made with: benchkit cannot check that
for a foreign file, so ``eval.features`` has to match it (``inception`` for ADM's and clean-fid's Inception statistics).

Samples are never held all at once: :func:`streamed_fid` generates ``chunk`` images at a time, passes them through
the extractor and keeps only running sums of the features (float64), from which mean and covariance follow
exactly (``np.cov``'s unbiased estimate). Under torchrun every rank takes every world-th chunk and the sums are
added up over ranks. The FID is computed by both libraries from the two pairs of statistics: torch-fidelity's
``fid_statistics_to_metric`` and clean-fid's ``frechet_distance``.

Deviation: each chunk draws its samples from its own seed (seed, chunk index), so for the same seed the streamed
samples are not the ones of the in-memory path (same distribution, other draws).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchkit.core import distributed as bdist
from benchkit.core.errors import ConfigError
from benchkit.metrics.quality import cleanfid_fid_or_reason, compare_fids


def load_reference_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``mu`` [D] and ``sigma`` [D, D] (float64) from an .npz file, with one clear error for a wrong file. Other arrays
    (an ADM batch's ``arr_0``, ``arr_1``, ``mu_s``, ``sigma_s``) are not read: ``np.load`` of an .npz is lazy."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"eval.reference_stats {str(p)!r} does not exist (an .npz with mu and sigma)")
    try:
        with np.load(p) as f:
            keys = list(f.keys())
            if "mu" not in keys or "sigma" not in keys:
                raise ConfigError(f"{str(p)!r} must hold arrays 'mu' and 'sigma'; found: {', '.join(keys) or 'none'}")
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read reference statistics {str(p)!r}: {e}") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ConfigError(f"{str(p)!r}: mu must be [D] and sigma [D, D]; got {mu.shape} and {sigma.shape}")
    return mu, sigma


class FeatureMoments:
    """Running count, sum and sum of outer products of features [N, D] (float64): exact mean and covariance."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.total = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, feats: torch.Tensor) -> None:
        """Add a batch of features [B, D]."""
        f = feats.detach().cpu().double()
        self.n += len(f)
        self.total += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self) -> None:
        """Sum the moments of every rank (a no-op outside torchrun)."""
        if bdist.world_size() == 1:
            return
        flat = torch.cat([torch.tensor([float(self.n)], dtype=torch.float64), self.total, self.outer.flatten()])
        summed = bdist.gather_cat(flat[None]).sum(0)
        d = len(self.total)
        self.n, self.total, self.outer = int(summed[0]), summed[1 : d + 1], summed[d + 1 :].view(d, d)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and unbiased covariance [D, D], as ``np.cov(feats, rowvar=False)`` gives them."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), sigma.numpy()


def save_reference_stats(images: torch.Tensor, extractor: Any, path: str | Path, batch_size: int = 500) -> Path:
    """Features of uint8 images [N, 3, H, W] through ``extractor``, reduced to ``mu``/``sigma`` in an .npz."""
    moments = None
    for i in range(0, len(images), batch_size):
        f = extractor.features(images[i : i + batch_size])
        moments = moments or FeatureMoments(f.shape[1])
        moments.update(f)
    assert moments is not None, "no images"
    mu, sigma = moments.stats()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, mu=mu, sigma=sigma)
    return p


def fid_from_stats(
    mu: np.ndarray, sigma: np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray
) -> dict[str, float | str]:
    """FID of two Gaussians by torch-fidelity and by clean-fid, checked against each other (``compare_fids``)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    tf = fid_statistics_to_metric({"mu": mu, "sigma": sigma}, {"mu": ref_mu, "sigma": ref_sigma}, verbose=False)
    fid = float(tf[KEY_METRIC_FID])
    return {"fid": fid, **compare_fids(fid, cleanfid_fid_or_reason(mu, sigma, ref_mu, ref_sigma))}


def streamed_fid(
    make_images: Callable[[torch.Tensor, int], torch.Tensor],
    labels: torch.Tensor,
    extractor: Any,
    stats_path: str | Path,
    *,
    chunk: int,
    seed: int,
) -> dict[str, float | str]:
    """FID of the images ``make_images(labels_chunk, chunk_seed)`` (uint8) for all ``labels`` against the file.

    Every rank must call under torchrun; all ranks return the same numbers.
    """
    ref_mu, ref_sigma = load_reference_stats(stats_path)
    moments = FeatureMoments(len(ref_mu))
    n_chunks = (len(labels) + chunk - 1) // chunk
    for c in range(bdist.rank(), n_chunks, bdist.world_size()):
        images = make_images(labels[c * chunk : (c + 1) * chunk], seed * 1_000_003 + c)
        feats = extractor.features(images)
        if feats.shape[1] != len(ref_mu):
            raise ConfigError(
                f"features have {feats.shape[1]} dimensions, {str(stats_path)!r} has {len(ref_mu)}: "
                f"set eval.features to the network the statistics were made with"
            )
        moments.update(feats)
    moments.all_reduce()
    mu, sigma = moments.stats()
    return {"features": extractor.tag, "n_samples": moments.n, **fid_from_stats(mu, sigma, ref_mu, ref_sigma)}
