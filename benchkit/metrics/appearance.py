"""Appearance statistics of images with no learned weights: colour distribution and where the edges are.

Two blocks, per image (float [B,3,H,W] in [-1,1]):

- ``colour`` (72-d): the square root of a soft joint RGB histogram (4 bins per channel, triangular kernel; the square
  root is the Hellinger embedding, so a large uniform background does not drown the object's colour), the mean and
  standard deviation of each channel, and the mean and standard deviation of chroma (max minus min channel). It sees
  desaturation, colour casts, channel permutations and contrast, which a classifier of colour-free classes ignores.
- ``edges`` (16-d): the luma gradient magnitude, after a Gaussian blur of one pixel per 32 of image side (so faint
  noise and half-pixel blur barely register), averaged over a 4 x 4 grid. It sees where structure sits (shifts,
  zoom) and how sharp it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchkit.metrics.distortions import gaussian_blur, luma

HIST_BINS = 4
EDGE_GRID = 4
COLOUR_DIM = HIST_BINS**3 + 8
EDGE_DIM = EDGE_GRID**2


def soft_colour_histogram(x: torch.Tensor, bins: int = HIST_BINS) -> torch.Tensor:
    """float [B,3,H,W] in [-1,1] -> [B, bins**3] joint RGB histogram (fractions of pixels, soft-assigned)."""
    B, _, H, W = x.shape
    t = (x.clamp(-1, 1) + 1) * (0.5 * (bins - 1))  # [B,3,H,W] in [0, bins-1]
    centres = torch.arange(bins, dtype=x.dtype, device=x.device).view(1, 1, bins, 1, 1)
    w = (1 - (t[:, :, None] - centres).abs()).clamp(min=0)  # [B,3,bins,H,W] triangular weights, summing to 1
    joint = torch.einsum("bihw,bjhw,bkhw->bijk", w[:, 0], w[:, 1], w[:, 2])  # [B,bins,bins,bins]
    return joint.reshape(B, -1) / (H * W)


def colour_block(x: torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] in [-1,1] -> [B, COLOUR_DIM]: sqrt histogram, channel means and stds, chroma mean and std."""
    chroma = x.amax(1) - x.amin(1)  # [B,H,W]
    moments = [x.mean((2, 3)), x.std((2, 3)), chroma.mean((1, 2))[:, None], chroma.std((1, 2))[:, None]]
    return torch.cat([soft_colour_histogram(x).sqrt(), *moments], dim=1)


def edge_block(x: torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] in [-1,1] -> [B, EDGE_DIM]: smoothed luma gradient magnitude on an EDGE_GRID^2 grid."""
    y = gaussian_blur(luma(x), max(1.0, x.shape[-1] / 32))  # [B,1,H,W]
    gx = F.pad(y[..., :, 1:] - y[..., :, :-1], (0, 1, 0, 0), mode="replicate")
    gy = F.pad(y[..., 1:, :] - y[..., :-1, :], (0, 0, 0, 1), mode="replicate")
    magnitude = torch.sqrt(gx**2 + gy**2 + 1e-8)
    return F.adaptive_avg_pool2d(magnitude, EDGE_GRID).flatten(1)
