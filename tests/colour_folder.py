"""A generated image folder whose classes are defined by colour: five warm colours x two shapes, as PNG files.

Each class is one (colour, shape) pair: red, orange, yellow, pink and brown; disk and square. Position, size, the
exact hue, saturation and brightness, and a neutral background vary per image. No channel permutation maps the
palette onto itself (permuted warm colours become greens, cyans and blues), so unlike ``shapes``, whose hues are
uniform, a channel permutation is a visible failure here.

Run ``python tests/colour_folder.py PATH [PER_CLASS]`` to write the folder for ``benchkit eval --sanity``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# name: (hue, saturation, value) centres in [0, 1]
COLOURS = {
    "red": (0.0, 0.85, 0.85),
    "orange": (0.075, 0.9, 0.95),
    "yellow": (0.15, 0.85, 0.95),
    "pink": (0.94, 0.45, 0.95),
    "brown": (0.07, 0.75, 0.5),
}
SHAPES = ("disk", "square")


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[n] hue, saturation, value -> [n, 3] RGB in [0, 1]."""
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6, 6)
    return v[:, None] - v[:, None] * s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def render(colour: str, shape: str, n: int, g: torch.Generator, size: int = 32) -> torch.Tensor:
    """``n`` images uint8 [n, 3, size, size] of one class."""
    h0, s0, v0 = COLOURS[colour]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    fg = _hsv_to_rgb(
        torch.remainder(h0 + u(-0.025, 0.025), 1), (s0 + u(-0.1, 0.1)).clamp(0, 1), (v0 + u(-0.1, 0.05)).clamp(0, 1)
    )
    grey = u(0.1, 0.9)
    bg = grey[:, None] + 0.04 * (torch.rand(n, 3, generator=g) - 0.5)  # a nearly neutral background
    cx, cy, r = u(-0.35, 0.35), u(-0.35, 0.35), u(0.3, 0.55)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]  # [n, size, size]
    if shape == "disk":
        dist = torch.sqrt(dx**2 + dy**2) - r[:, None, None]
    else:
        dist = torch.maximum(dx.abs(), dy.abs()) - 0.85 * r[:, None, None]
    alpha = (0.5 - dist / (2.0 / size)).clamp(0, 1)[:, None]  # one-pixel anti-aliased edge
    img = bg[:, :, None, None] * (1 - alpha) + fg[:, :, None, None] * alpha
    img = img + 0.01 * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1).mul(255).round().to(torch.uint8)


def write_colour_folder(root: Path, per_class: int, seed: int = 0, size: int = 32) -> Path:
    """Write ``root/<colour>-<shape>/<i>.png``, ``per_class`` images per class; returns ``root``."""
    g = torch.Generator().manual_seed(seed)
    for colour in COLOURS:
        for shape in SHAPES:
            folder = Path(root) / f"{colour}-{shape}"
            folder.mkdir(parents=True, exist_ok=True)
            images = render(colour, shape, per_class, g, size).permute(0, 2, 3, 1).numpy()
            for i, im in enumerate(images):
                Image.fromarray(np.ascontiguousarray(im)).save(folder / f"{i:05d}.png")
    return Path(root)


if __name__ == "__main__":
    write_colour_folder(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
