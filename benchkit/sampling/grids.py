"""Image grids as PNG files: sample grids and original/reconstruction grids.

Grids are built with ``torchvision.utils.make_grid`` (``padding`` pixels between and around tiles) and
written atomically through PIL.

Deviations:
- A single image still gets the padding border (``make_grid`` returns one image unpadded), so the grid size
  is always ``rows * (H + padding) + padding`` by ``cols * (W + padding) + padding``.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from benchkit.core.files import atomic_write_bytes
from benchkit.data.base import to_uint8

log = logging.getLogger(__name__)


def _as_uint8(images: torch.Tensor, what: str) -> torch.Tensor:
    """uint8 [N,3,H,W] as is; float images are taken to be in [-1, 1] and converted."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} must be [N,3,H,W], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if images.dtype == torch.uint8:
        return images.detach().cpu()
    if images.is_floating_point():
        return to_uint8(images.detach().cpu())
    raise ValueError(f"{what} must be uint8 [0,255] or float [-1,1], got {images.dtype}")


def grid_tensor(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 255) -> torch.Tensor:
    """Tile uint8 (or float [-1,1]) images [N,3,H,W] into one uint8 image [3, H', W'], ``nrow`` per row."""
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    images = _as_uint8(images, "images")
    if images.shape[0] == 1:  # make_grid skips the padding for one image
        return F.pad(images[0], (padding,) * 4, value=pad_value)
    return make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)


def _write_png(grid: torch.Tensor, path: Path) -> Path:
    assert grid.dtype == torch.uint8 and grid.ndim == 3, f"grid must be uint8 [3,H,W], got {grid.dtype} {grid.shape}"
    buf = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).contiguous().numpy(), mode="RGB").save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    log.debug("wrote %s (%dx%d)", path, grid.shape[2], grid.shape[1])
    return Path(path)


def save_grid(images_uint8: torch.Tensor, path: Path, nrow: int = 8, padding: int = 2) -> Path:
    """Save images [N,3,H,W] (uint8, or float in [-1,1]) as one PNG grid with ``nrow`` images per row."""
    return _write_png(grid_tensor(images_uint8, nrow=nrow, padding=padding), path)


def reconstruction_grid(
    originals: torch.Tensor, recons: torch.Tensor, path: Path, nrow: int = 8, padding: int = 2
) -> Path:
    """Save originals and reconstructions [N,3,H,W] as a PNG whose rows alternate: originals, then the
    reconstructions of those same images directly below, ``nrow`` pairs per row pair."""
    originals, recons = _as_uint8(originals, "originals"), _as_uint8(recons, "recons")
    if originals.shape != recons.shape:
        raise ValueError(f"originals {tuple(originals.shape)} and recons {tuple(recons.shape)} differ in shape")
    n = originals.shape[0]
    nrow = max(1, min(nrow, n))
    blank = torch.full_like(originals[:1], 255)
    tiles = []
    for start in range(0, n, nrow):
        # 1. One row of originals, then the matching row of reconstructions; a short last row is blank-padded.
        for src in (originals, recons):
            chunk = src[start : start + nrow]
            tiles += [chunk, blank.expand(nrow - chunk.shape[0], -1, -1, -1)]
    stacked = torch.cat(tiles)
    assert stacked.shape[0] == 2 * nrow * math.ceil(n / nrow), "every row must hold nrow tiles"
    return _write_png(grid_tensor(stacked, nrow=nrow, padding=padding), path)
