"""``imagefolder:PATH``: your own images in ImageNet-style class folders, decoded with Pillow.

Layouts (class names are the sorted folder names; files are found recursively inside each class folder):

- ``PATH/<class>/<image>``: split deterministically per class; ``test_fraction`` of each class (rounded, at least
  one image left for training) goes to ``test``, chosen by a permutation seeded with ``seed``.
- ``PATH/train/<class>/<image>`` with ``PATH/val/<class>/...`` (or ``PATH/test/...``; ``val`` wins when both exist):
  the given split is used as is. Class indices come from the union of both splits' class folders.

Class folders without any image file are ignored, with a warning.

Every split is returned in a shuffled order (seeded), so ``ImageData.subset(n)`` is a fair sample.

Conversion to RGB: EXIF orientation is applied; images with an alpha channel or palette transparency (RGBA, LA, PA,
P with a ``transparency`` entry) are composited over the opaque ``background`` colour, white by default, because
transparent pixels usually hold arbitrary colours and icons and sprites are drawn for a light page; 16-bit and float
grayscale is scaled to 8 bits; L, 1, P, CMYK and the rest go through Pillow's ``convert("RGB")``. Then the short side
is resized to ``image_size`` (bicubic, antialiased when shrinking) and the centre is cropped, as in ADM/MAR.

Files with an image extension that Pillow cannot decode are skipped, with one warning that counts them; files with
other extensions and hidden files are ignored.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from benchkit.core.errors import DataError
from benchkit.core.registry import DATASETS
from benchkit.data.base import ImageData
from benchkit.data.lazy import LazyImageFolder, LazyImages
from benchkit.data.listing import (
    MAX_WORKERS,
    ImageFolderConfig,
    decode,
    list_split,
)
from benchkit.data.shapes import Split, check_split

log = logging.getLogger(__name__)


@DATASETS.register("imagefolder", config=ImageFolderConfig)
def imagefolder(cfg: ImageFolderConfig, *, split: Split, root: str | None = None, image_size: int = 32) -> ImageData:
    """Your own images in class subfolders (ImageNet layout), given as imagefolder:PATH."""
    check_split(split)
    del root  # PATH is used as given (relative to the working directory); --data-root is for named datasets
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise DataError(f"image folder {path} does not exist or is not a folder")
    if cfg.lazy:
        folder = LazyImageFolder(
            path,
            split=split,
            image_size=image_size,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
            background=cfg.background,  # type: ignore[arg-type]  # RGB, checked with the config
        )
        return ImageData(
            f"imagefolder:{path.resolve()}",
            split,
            LazyImages(folder),  # type: ignore[arg-type]  # indexable like a uint8 tensor
            folder.labels,
            folder.class_names,
        )
    files, labels, classes = list_split(path, cfg, split)

    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1, len(files) // 64 + 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded = list(pool.map(lambda p: decode(p, image_size, cfg.background), files))
    bad = [(f, r) for f, r in zip(files, decoded) if isinstance(r, str)]
    good = [(r, y) for r, y in zip(decoded, labels) if not isinstance(r, str)]
    if not good:
        raise DataError(
            f"none of the {len(files)} image files of the {split} split in {path} could be read "
            f"(first: {bad[0][0]}: {bad[0][1]})"
        )
    if bad:
        log.warning(
            "skipped %d unreadable image file(s) of %d in %s (first: %s: %s)", len(bad), len(files), path, *bad[0]
        )
    stacked = torch.from_numpy(np.stack([r for r, _ in good]))  # [N, H, W, 3]
    images = stacked.permute(0, 3, 1, 2).contiguous()  # [N, 3, H, W]
    label_tensor = torch.tensor([y for _, y in good], dtype=torch.int64)
    log.debug("loaded imagefolder %s %s: %d images, %d classes", path, split, len(images), len(classes))
    return ImageData(f"imagefolder:{path.resolve()}", split, images, label_tensor, classes)
