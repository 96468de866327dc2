"""Image distortions for the FID battery: colour, contrast, blur, noise, spatial and diversity, each a pure function.

Every distortion maps uint8 images [N,3,H,W] (and their labels, for the diversity family) to N uint8 images; the
strength argument is the physical quantity named in the battery's table (pixels, a noise std in [-1,1] units, a
fraction of classes, ...). Random choices come from the ``torch.Generator`` passed in, so a seed fixes the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchkit.data.base import to_float, to_uint8

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights, as Pillow's convert("L")


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


def luma(x: torch.Tensor) -> torch.Tensor:
    """float [B,3,H,W] -> [B,1,H,W] BT.601 luma."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


# ---------------------------------------------------------------------------------------------- appearance


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``sigma`` pixels."""
    return to_uint8(gaussian_blur(to_float(images), sigma))


def noise(images: torch.Tensor, std: float, g: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of ``std`` in [-1,1] units (0.02 is about 2.5 of 255 grey levels)."""
    x = to_float(images)
    return to_uint8(x + std * torch.randn(x.shape, generator=g, dtype=x.dtype))


def desaturate(images: torch.Tensor, amount: float) -> torch.Tensor:
    """Blend each pixel towards its grey (luma) value; ``amount`` 1 gives a grey image."""
    x = to_float(images)
    return to_uint8(x + amount * (luma(x) - x))


def colour_cast(images: torch.Tensor, shift: float, channel: int = 0) -> torch.Tensor:
    """Add ``shift`` (in [-1,1] units) to one channel (0 = red)."""
    x = to_float(images).clone()
    x[:, channel] += shift
    return to_uint8(x)


def permute_channels(
    images: torch.Tensor, fraction: float, g: torch.Generator, order: tuple[int, int, int] = (2, 0, 1)
) -> torch.Tensor:
    """RGB -> BRG (``order``) on a random ``fraction`` of the images, the others unchanged."""
    pick = torch.rand(len(images), generator=g) < fraction
    out = images.clone()
    out[pick] = images[pick][:, list(order)]
    return out


def contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Scale every pixel's distance to the image's mean luma by ``factor`` (0.5 halves the contrast)."""
    x = to_float(images)
    mean = luma(x).mean(dim=(2, 3), keepdim=True)
    return to_uint8(mean + factor * (x - mean))


def shift(images: torch.Tensor, pixels: int) -> torch.Tensor:
    """Translate every image by ``pixels`` right and down (reflect padding fills the uncovered border)."""
    if pixels <= 0:
        return images.clone()
    x = to_float(images)
    H, W = x.shape[-2:]
    p = min(pixels, H - 1, W - 1)
    padded = F.pad(x, (p, 0, p, 0), mode="reflect")
    return to_uint8(padded[..., :H, :W])


def crop_resize(images: torch.Tensor, keep: float) -> torch.Tensor:
    """Crop the central ``keep`` fraction of each side and resize back (bilinear, antialiased): a zoom-in."""
    H, W = images.shape[-2:]
    h, w = max(1, round(H * keep)), max(1, round(W * keep))
    top, left = (H - h) // 2, (W - w) // 2
    x = to_float(images)[..., top : top + h, left : left + w]
    return to_uint8(F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=True))


# ---------------------------------------------------------------------------------------------- diversity


def _take(pool: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` indices from ``pool`` without repeats where the pool allows (a shuffled cycle through it)."""
    reps = math.ceil(n / max(1, len(pool)))
    order = torch.cat([pool[torch.randperm(len(pool), generator=g)] for _ in range(reps)])
    return order[:n]


def mode_drop(
    images: torch.Tensor, labels: torch.Tensor, n: int, fraction: float, num_classes: int, g: torch.Generator
) -> torch.Tensor:
    """``n`` images from the classes that remain after dropping ``round(fraction * num_classes)`` of them."""
    dropped = torch.randperm(num_classes, generator=g)[: round(fraction * num_classes)]
    keep = torch.nonzero(~torch.isin(labels, dropped)).flatten()
    return images[_take(keep, n, g)]


def mode_collapse(images: torch.Tensor, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``n`` images that are copies of only ``k`` distinct ones."""
    distinct = torch.randperm(len(images), generator=g)[:k]
    return images[distinct[torch.arange(n) % len(distinct)]]


def class_imbalance(
    images: torch.Tensor, labels: torch.Tensor, n: int, share: float, num_classes: int, g: torch.Generator
) -> torch.Tensor:
    """``n`` images of which a ``share`` come from one class and the rest from all classes evenly."""
    major = int(torch.randint(num_classes, (1,), generator=g))
    n_major = round(share * n)
    major_idx = _take(torch.nonzero(labels == major).flatten(), n_major, g)
    rest = _take(torch.arange(len(images)), n - n_major, g)
    return images[torch.cat([major_idx, rest])]
