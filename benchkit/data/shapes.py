"""``shapes``: the embedded default dataset, ten classes of anti-aliased geometric shapes drawn in-process.

Nothing is downloaded or cached: a split is a pure function of ``(seed, split, size, image_size)`` and the default
20 000-image train split renders in a few seconds on two CPU cores. Every class is rendered in one vectorised pass
(chunked to bound memory): pixel centres are mapped into each image's shape frame (translate, rotate, scale), a
signed distance ``d`` to the shape's boundary is evaluated there, and the coverage ``clamp(0.5 - d / pixel, 0, 1)``
blends a shaded foreground colour over a solid or gradient background, which anti-aliases the edges over one pixel.

Per image, continuously: position, size, rotation (only jittered for the orientation-defined classes bars,
stripes and diamond), class-specific proportions (corner rounding, ring thickness, star depth, bar count, stripe
period ...), background colour and gradient, foreground colour (hue and saturation free, HSV value 0.3 to 0.65 away
from the background's, so the shape always stands out) and a linear shading across the shape.

Splits: ``train`` draws from seed ``2 * seed`` and ``test`` from ``2 * seed + 1``, so the two never share a random
stream for any seed. Labels are balanced (``n // 10`` per class, the remainder to the first classes) and the split is
shuffled, so ``ImageData.subset(n)`` stays close to balanced. Scene parameters are drawn before rendering, so one
seed gives the same scenes at every ``image_size`` (the shapes are resolution-independent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from benchkit.core.errors import ConfigError
from benchkit.core.registry import DATASETS
from benchkit.data.base import ImageData

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

CLASS_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "ring", "cross", "star", "bars", "stripes", "diamond", "crescent",
)  # fmt: skip
_UPRIGHT = {"bars", "stripes", "diamond"}  # classes defined by their orientation: rotation is only jittered
_REF_PIXEL = 2.0 / 32  # one pixel of the reference 32x32 grid in normalised [-1, 1] units
_CHUNK_ELEMENTS = 1 << 21  # images x pixels rendered per pass (~8 MB per float tensor)


def check_split(split: str) -> Split:
    """Return ``split`` if it is a valid split name, else raise ConfigError listing the valid ones."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


@dataclass(frozen=True)
class ShapesConfig:
    """Options of the ``shapes`` dataset."""

    num_train: int = 20_000
    num_test: int = 5_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_train < 1:
            raise ValueError(f"num_train must be >= 1, got {self.num_train}")
        if self.num_test < 1:
            raise ValueError(f"num_test must be >= 1, got {self.num_test}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


# ---------------------------------------------------------------------------------------------- signed distances
# All take local coordinates x, y [n, P] (shape frame, shape radius ~1) and per-image parameters [n, 1];
# they return a signed distance [n, P] in the same units, negative inside.


def _box(x: torch.Tensor, y: torch.Tensor, hx: torch.Tensor, hy: torch.Tensor) -> torch.Tensor:
    qx, qy = x.abs() - hx, y.abs() - hy
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _polygon(x: torch.Tensor, y: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor) -> torch.Tensor:
    """Exact distance to a closed polygon with vertices vx, vy [n, V]; the sign comes from a crossing count."""
    n_vertices = vx.shape[1]
    dist2 = torch.full_like(x, float("inf"))
    inside = torch.zeros_like(x, dtype=torch.bool)
    for i in range(n_vertices):
        j = (i - 1) % n_vertices  # edge from vertex j to vertex i
        ax, ay, bx, by = vx[:, i : i + 1], vy[:, i : i + 1], vx[:, j : j + 1], vy[:, j : j + 1]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0, 1)
        dist2 = torch.minimum(dist2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        # Even-odd rule: a horizontal ray from the point crosses edge (a, b) iff y lies between a.y and b.y and the
        # point is on the ray's side of the edge.
        crosses = ((ay <= y) != (by <= y)) & (x < ax + (y - ay) * ex / torch.where(ey == 0, 1e-12, ey))
        inside ^= crosses
    return torch.where(inside, -1.0, 1.0) * dist2.sqrt()


def _regular(count: int, radius: torch.Tensor, start: float = math.pi / 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices [n, count] of a star-shaped polygon with per-vertex radii ``radius`` [n, count] (y points down)."""
    angle = start + torch.arange(count, dtype=torch.float32) * (2 * math.pi / count)
    return radius * torch.cos(angle), -radius * torch.sin(angle)


def _sdf_circle(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x * x + y * y) - 1.0


def _sdf_square(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    aspect = (0.8 + 0.45 * a[:, 0:1]).sqrt()  # width / height in [0.8, 1.25]
    round_ = 0.3 * a[:, 1:2]
    return _box(x, y, 0.88 * aspect - round_, 0.88 / aspect - round_) - round_


def _sdf_triangle(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    radius = 1.25 * (0.85 + 0.25 * a[:, 0:3])  # each vertex jittered: not always equilateral
    return _polygon(x, y, *_regular(3, radius))


def _sdf_ring(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    thickness = 0.25 + 0.3 * a[:, 0:1]
    return (torch.sqrt(x * x + y * y) - (1.0 - thickness / 2)).abs() - thickness / 2


def _sdf_cross(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    arm = 0.2 + 0.18 * a[:, 0:1]
    length = 0.85 + 0.3 * a[:, 1:2]  # vertical arm relative to the horizontal one
    return torch.minimum(_box(x, y, torch.ones_like(arm), arm), _box(x, y, arm, length))


def _sdf_star(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    inner = 0.38 + 0.17 * a[:, 0:1]
    radius = 1.2 * torch.where(torch.arange(10) % 2 == 0, 1.0, inner)  # [n, 10] alternating outer / inner
    return _polygon(x, y, *_regular(10, radius))


def _sdf_bars(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    count = 2 + (a[:, 0:1] * 3).floor().clamp(max=2)  # 2, 3 or 4 horizontal bars stacked like a menu icon
    spacing = 1.8 / count
    half_height = spacing * (0.2 + 0.13 * a[:, 1:2])
    half_width = 0.9 + 0.25 * a[:, 2:3]
    out = torch.full_like(x, float("inf"))
    for j in range(4):
        centre = -0.9 + spacing * (j + 0.5)
        d = _box(x, y - centre, half_width, half_height)
        out = torch.where(j < count, torch.minimum(out, d), out)
    return out


def _sdf_stripes(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    # A full-image texture of vertical stripes: x here is the rotated but unscaled image coordinate (see _render).
    period = (4.0 + 5.0 * a[:, 0:1]) * _REF_PIXEL  # 4 to 9 reference pixels
    duty = 0.35 + 0.3 * a[:, 1:2]
    m = torch.remainder(x + a[:, 2:3] * period, period)
    return (m - period / 2).abs() - duty * period / 2


def _sdf_diamond(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    half_height = torch.full_like(a[:, 0:1], 1.35)
    half_width = half_height / (1.5 + 0.6 * a[:, 0:1])  # elongated, so a diamond never looks like a square
    zero = torch.zeros_like(half_width)
    vx = torch.cat([zero, half_width, zero, -half_width], dim=1)
    vy = torch.cat([-half_height, zero, half_height, zero], dim=1)
    return _polygon(x, y, vx, vy)


def _sdf_crescent(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    offset = 0.3 + 0.3 * a[:, 0:1]
    bite = 0.75 + 0.2 * a[:, 1:2]  # radius of the disc cut away
    disc = torch.sqrt(x * x + y * y) - 1.0
    cut = torch.sqrt((x - offset) ** 2 + y * y) - bite
    return torch.maximum(disc, -cut)


_SDF: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "circle": _sdf_circle, "square": _sdf_square, "triangle": _sdf_triangle, "ring": _sdf_ring,
    "cross": _sdf_cross, "star": _sdf_star, "bars": _sdf_bars, "stripes": _sdf_stripes,
    "diamond": _sdf_diamond, "crescent": _sdf_crescent,
}  # fmt: skip
assert tuple(_SDF) == CLASS_NAMES, "one signed distance per class, in label order"


# ---------------------------------------------------------------------------------------------- scene sampling


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[n] hue, saturation, value in [0, 1] -> [n, 3] RGB in [0, 1]."""
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6, 6)
    return v[:, None] - v[:, None] * s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def _sample_scenes(name: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """All random parameters of ``n`` images of class ``name`` (drawn before rendering, independent of size)."""

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    upright = name in _UPRIGHT
    angle = u(n, lo=-0.22, hi=0.22) if upright else u(n, hi=2 * math.pi)
    bg_h, bg_s, bg_v = u(n), u(n) ** 1.5, u(n, lo=0.05, hi=0.95)
    # Foreground brightness is 0.3-0.65 away from the background's, towards the side with room.
    direction = torch.where(bg_v < 0.5, 1.0, -1.0)
    fg_v = (bg_v + direction * u(n, lo=0.3, hi=0.65)).clamp(0, 1)
    bg2_v = (bg_v + u(n, lo=-0.15, hi=0.15)).clamp(0, 1)
    solid = u(n) < 0.3
    return {
        "centre": u(n, 2, lo=-0.3, hi=0.3),
        "size": u(n, lo=0.32, hi=0.6),
        "angle": angle,
        "params": u(n, 3),
        "bg1": _hsv_to_rgb(bg_h, bg_s, bg_v),
        "bg2": _hsv_to_rgb(torch.remainder(bg_h + u(n, lo=-0.15, hi=0.15), 1), bg_s, bg2_v),
        "bg_dir": u(n, hi=2 * math.pi),
        "bg_strength": torch.where(solid, 0.0, u(n, lo=0.5, hi=1.0)),
        "fg": _hsv_to_rgb(u(n), u(n, lo=0.15, hi=1.0), fg_v),
        "shade_dir": u(n, hi=2 * math.pi),
        "shade": u(n, hi=0.25),
    }


def _render(name: str, scene: dict[str, torch.Tensor], image_size: int) -> torch.Tensor:
    """Render the scenes of one class: uint8 [n, 3, image_size, image_size]."""
    pixel = 2.0 / image_size
    coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) * pixel - 1.0
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    px, py = gx.reshape(1, -1), gy.reshape(1, -1)  # [1, P] pixel centres, y pointing down

    def col(t: torch.Tensor) -> torch.Tensor:  # [n] -> [n, 1]
        return t[:, None]

    # 1. Pixel centres into the shape frame: translate by the centre, rotate by -angle, scale by 1 / size.
    cos, sin = col(torch.cos(scene["angle"])), col(torch.sin(scene["angle"]))
    dx, dy = px - scene["centre"][:, 0:1], py - scene["centre"][:, 1:2]
    if name == "stripes":  # a texture over the whole image: rotate around the image centre, no scaling
        x, y, scale = cos * px + sin * py, -sin * px + cos * py, torch.ones_like(cos)
    else:
        scale = col(scene["size"])
        x, y = (cos * dx + sin * dy) / scale, (-sin * dx + cos * dy) / scale

    # 2. Signed distance in image units, then coverage with a one-pixel soft edge (the anti-aliasing).
    dist = _SDF[name](x, y, scene["params"]) * scale
    alpha = (0.5 - dist / pixel).clamp(0, 1).unsqueeze(-1)  # [n, P, 1]

    # 3. Background: a linear gradient between two related colours along a random direction (or solid).
    bdx, bdy = col(torch.cos(scene["bg_dir"])), col(torch.sin(scene["bg_dir"]))
    t = (0.5 + 0.5 * col(scene["bg_strength"]) * (bdx * px + bdy * py)).clamp(0, 1).unsqueeze(-1)
    background = scene["bg1"][:, None] * (1 - t) + scene["bg2"][:, None] * t  # [n, P, 3]

    # 4. Foreground: one colour with a linear shading across the shape, as if lit from one side.
    sdx, sdy = col(torch.cos(scene["shade_dir"])), col(torch.sin(scene["shade_dir"]))
    light = 1.0 + col(scene["shade"]) * (sdx * dx + sdy * dy) / col(scene["size"])
    foreground = (scene["fg"][:, None] * light.unsqueeze(-1)).clamp(0, 1)

    image = background * (1 - alpha) + foreground * alpha  # [n, P, 3]
    image = image.mul(255).round().to(torch.uint8)
    return image.transpose(1, 2).reshape(-1, 3, image_size, image_size).contiguous()


def generate_shapes(n: int, *, seed: int, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` shuffled shape images uint8 [n, 3, S, S] and labels int64 [n], a pure function of the arguments."""
    g = torch.Generator().manual_seed(seed)
    counts = [n // len(CLASS_NAMES) + (k < n % len(CLASS_NAMES)) for k in range(len(CLASS_NAMES))]
    chunk = max(1, _CHUNK_ELEMENTS // (image_size * image_size))
    images, labels = [], []
    for label, (name, count) in enumerate(zip(CLASS_NAMES, counts)):
        if count == 0:
            continue
        scene = _sample_scenes(name, count, g)
        for start in range(0, count, chunk):
            part = {k: v[start : start + chunk] for k, v in scene.items()}
            images.append(_render(name, part, image_size))
        labels.append(torch.full((count,), label, dtype=torch.int64))
    order = torch.randperm(n, generator=g)
    return torch.cat(images)[order], torch.cat(labels)[order]


@DATASETS.register("shapes", config=ShapesConfig)
def shapes(cfg: ShapesConfig, *, split: Split, root: str | None = None, image_size: int = 32) -> ImageData:
    """Embedded default: 10 classes of geometric shapes rendered in-process (no download, deterministic)."""
    check_split(split)
    del root  # nothing on disk
    n = cfg.num_train if split == "train" else cfg.num_test
    images, labels = generate_shapes(n, seed=2 * cfg.seed + (split == "test"), image_size=image_size)
    return ImageData("shapes", split, images, labels, CLASS_NAMES)
