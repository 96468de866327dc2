"""Sanity ladder for a feature network: FID must grow as images move away from the held-out distribution.

Rungs, each compared with the same held-out reference (n test images):
1. n training images (same distribution, different images: only the sample-size bias of FID remains);
2. the same training images lightly corrupted (Gaussian blur sigma 0.6 px plus Gaussian noise of std 0.04);
3. heavily corrupted (blur sigma 1.0 px plus noise of std 0.08);
4. uniform noise images.
A feature network whose FIDs are not strictly increasing along the ladder cannot rank generators; the FID paper makes
the same check with disturbances of increasing strength (Heusel et al. 2017, arXiv 1706.08500).

Deviations:
- Corruptions combine blur and noise at two strengths instead of the paper's separate disturbance types and levels.
"""

from __future__ import annotations

import math
from typing import TypedDict

import torch
import torch.nn.functional as F

from benchkit.data.base import ImageData, to_float, to_uint8
from benchkit.metrics.features import Extractor
from benchkit.metrics.quality import feature_stats, frechet_distance

CORRUPTIONS: tuple[tuple[str, float, float], ...] = (
    ("light corruption (blur 0.6, noise 0.04)", 0.6, 0.04),
    ("heavy corruption (blur 1.0, noise 0.08)", 1.0, 0.08),
)  # (row name, blur sigma in pixels, noise std in [-1,1] units)


class SanityLadder(TypedDict):
    """(rung name, FID against the held-out reference) per rung, whether the FIDs strictly increase, n, features."""

    rows: list[tuple[str, float]]
    monotone: bool
    n: int
    features: str


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of float images [B,C,H,W] (reflect padding, radius ceil(3 sigma))."""
    if sigma <= 0:
        return x
    B, C, H, W = x.shape
    radius = min(math.ceil(3 * sigma), H - 1, W - 1)
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(coords**2) / (2 * sigma**2))
    k = k / k.sum()
    t = F.pad(x.reshape(B * C, 1, H, W), (radius, radius, radius, radius), mode="reflect")
    t = F.conv2d(t, k.view(1, 1, -1, 1))
    t = F.conv2d(t, k.view(1, 1, 1, -1))
    return t.reshape(B, C, H, W)


def corrupt(images: torch.Tensor, blur_sigma: float, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 [B,3,H,W] -> blurred, noised uint8 images (noise std in [-1,1] units)."""
    x = gaussian_blur(to_float(images), blur_sigma)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return to_uint8(x + noise_std * noise)


def sanity_ladder(train: ImageData, test: ImageData, extractor: Extractor, n: int = 1000, *,
                  seed: int = 0) -> SanityLadder:
    """FID of train / lightly corrupted / heavily corrupted / noise images against ``n`` held-out images."""
    n = min(n, len(train), len(test))
    if n < 5:
        raise ValueError(f"the sanity ladder needs at least 5 images per split, got {n}")
    g = torch.Generator().manual_seed(seed)
    ref_mu, ref_sigma = feature_stats(extractor.features(test.images[:n]))
    base = train.images[:n]
    rungs = [("train vs held-out", base)]
    rungs += [(name, corrupt(base, blur, noise, g)) for name, blur, noise in CORRUPTIONS]
    rungs.append(("uniform noise", torch.randint(0, 256, tuple(base.shape), generator=g, dtype=torch.uint8)))
    rows = [(name, frechet_distance(*feature_stats(extractor.features(x)), ref_mu, ref_sigma)) for name, x in rungs]
    fids = [fid for _, fid in rows]
    monotone = all(a < b for a, b in zip(fids, fids[1:]))
    return SanityLadder(rows=rows, monotone=monotone, n=n, features=extractor.tag)
