"""Listing and decoding of image-folder datasets, shared by the in-memory loader (``benchkit.data.imagefolder``)
and the lazy one (``benchkit.data.lazy``): which files form which split, in which seeded order, and how one file
becomes an RGB image of the requested size. The layouts and conversions are described in ``imagefolder``'s docstring.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from benchkit.core.errors import DataError
from benchkit.data.shapes import Split

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".tga", ".jfif"}
)
_TEST_DIRS = ("val", "test")
MAX_WORKERS = 8  # Pillow releases the GIL while decoding and resizing


@dataclass(frozen=True)
class ImageFolderConfig:
    """Options of the ``imagefolder`` dataset (``imagefolder:PATH`` sets ``path``)."""

    path: str = ""
    test_fraction: float = 0.2
    seed: int = 0
    background: tuple[int, ...] = (255, 255, 255)  # RGB that transparent pixels are composited over
    # decode on demand (benchkit.data.lazy, ADM center crop) instead of loading every image: for folders larger
    # than memory; the token cache is then written in memory-mapped shards (benchkit.training.tokencache)
    lazy: bool = False

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("path must be set: use the dataset name imagefolder:PATH")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if len(self.background) != 3 or any(not 0 <= c <= 255 for c in self.background):
            raise ValueError(f"background must be three values in 0..255, got {self.background}")


def to_rgb(img: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Any Pillow image -> RGB, compositing transparency over ``background``."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 255:  # 16-bit (or wider) data: scale the full range down to 8 bits
            arr = arr * (255.0 / (65535.0 if arr.max() <= 65535 else arr.max()))
        img = Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), mode="L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if not has_alpha:
        return img.convert("RGB")
    rgba = img.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the short side to ``size`` (bicubic) and crop the centre ``size`` x ``size``."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def decode(path: Path, size: int, background: tuple[int, ...]) -> np.ndarray | str:
    """uint8 [size, size, 3], or the reason the file could not be read."""
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft(img.mode, (size, size))  # let libjpeg shrink by 2/4/8 while decoding large photos
            img.load()
            img = ImageOps.exif_transpose(img)
            out = np.asarray(resize_center_crop(to_rgb(img, background), size), dtype=np.uint8)
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError, ... by format
        return f"{type(e).__name__}: {e}"
    assert out.shape == (size, size, 3), f"decoded {path} to {out.shape}"
    return out


def _image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted, hidden entries skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            Path(dirpath, f)
            for f in sorted(filenames)
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        ]
    return found


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _split_dirs(root: Path) -> tuple[Path, Path] | None:
    """(train, test) folders when ``root`` is pre-split into train/ and val/ or test/ holding class folders."""
    train = root / "train"
    if not (train.is_dir() and _class_dirs(train)):
        return None
    for name in _TEST_DIRS:
        if (root / name).is_dir() and _class_dirs(root / name):
            return train, root / name
    return None


def _per_class(folder: Path, classes: list[str]) -> dict[str, list[Path]]:
    return {name: _image_files(folder / name) if (folder / name).is_dir() else [] for name in classes}


def list_split(root: Path, cfg: ImageFolderConfig, split: Split) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """The files and labels of ``split`` and the class names, in a seeded shuffled order."""
    g = torch.Generator().manual_seed(cfg.seed)
    pre_split = _split_dirs(root)
    if pre_split is not None:
        train_dir, test_dir = pre_split
        names = sorted(set(_class_dirs(train_dir)) | set(_class_dirs(test_dir)))
        train, test = _per_class(train_dir, names), _per_class(test_dir, names)
        found = {name: train[name] + test[name] for name in names}
    else:
        names = _class_dirs(root)
        if not names:
            raise DataError(
                f"no class subfolders in {root}; expected {root}/<class>/<image>.png (one folder per class; put all "
                f"images in one folder for unlabeled data) or {root}/train/<class>/... with {root}/val/<class>/..."
            )
        found = _per_class(root, names)
    empty = [name for name in names if not found[name]]
    classes = tuple(name for name in names if found[name])
    if not classes:
        raise DataError(
            f"no image files in the class folders of {root}; readable extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    if empty:
        log.warning("%s: ignoring %d class folder(s) without images: %s", root, len(empty), ", ".join(empty[:5]))

    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        if pre_split is not None:
            chosen_files = train[name] if split == "train" else test[name]
        else:
            # 1. Per class, a seeded permutation; the first round(fraction * n) images (at most n - 1) are test.
            n = len(found[name])
            n_test = min(round(cfg.test_fraction * n), n - 1)
            order = torch.randperm(n, generator=g).tolist()
            chosen = sorted(order[:n_test] if split == "test" else order[n_test:])
            chosen_files = [found[name][i] for i in chosen]
        files += chosen_files
        labels += [label] * len(chosen_files)
    if not files:
        if pre_split is not None:
            raise DataError(f"the {split} split of {root} ({pre_split[split == 'test']}) has no images")
        raise DataError(f"the {split} split of {root} has no images with test_fraction={cfg.test_fraction}")
    # 2. Shuffle the split itself so that subset(n) takes a sample of every class.
    perm = torch.randperm(len(files), generator=g).tolist()
    return [files[i] for i in perm], [labels[i] for i in perm], classes
