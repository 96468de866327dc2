"""Image folders too large for memory: files decoded on demand by ``DataLoader`` workers.

:class:`LazyImageFolder` lists ``imagefolder`` files exactly as the in-memory loader does (same layouts, classes,
split and seeded order: ``benchkit.data.imagefolder``) but keeps only paths; ``__getitem__`` decodes one image,
applies the ADM center crop (as used by ADM, DiT and MAR: halve the image with a box filter while its short side is
at least twice the target, resize the short side to the target with bicubic, crop the centre) and, with ``flip``,
a random horizontal flip. :func:`image_loader` wraps it in a ``DataLoader`` with worker processes, so memory holds
only the batches in flight. The in-memory loader stays the default for small data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from benchkit.core.errors import DataError
from benchkit.data.listing import ImageFolderConfig, list_split, to_rgb
from benchkit.data.shapes import Split, check_split


def adm_center_crop(img: Image.Image, size: int) -> Image.Image:
    """ADM's center crop: box-filter halvings while the short side >= 2 * size, bicubic to ``size``, centre crop."""
    while min(img.size) >= 2 * size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.Resampling.BOX)
    scale = size / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.Resampling.BICUBIC)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


class LazyImageFolder(Dataset):
    """(uint8 image [3, size, size], label) pairs of an image folder split, decoded when asked for."""

    def __init__(
        self,
        path: str | Path,
        *,
        split: Split = "train",
        image_size: int = 256,
        flip: bool = False,
        test_fraction: float = 0.0,
        seed: int = 0,
        background: tuple[int, int, int] = (255, 255, 255),
    ) -> None:
        check_split(split)
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a folder")
        cfg = ImageFolderConfig(path=str(root), test_fraction=test_fraction, seed=seed, background=background)
        files, labels, self.class_names = list_split(root, cfg, split)
        # one numpy buffer of encoded paths, not a list of Path objects: forked DataLoader workers share it, whereas
        # reading a Python object writes its reference count and so copies its memory page into every worker
        self.files = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.image_size, self.flip, self.background = image_size, flip, background

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def load(self, i: int, *, mirrored: bool = False) -> torch.Tensor:
        """Image ``i`` as uint8 [3, H, W], cropped (and mirrored with ``mirrored``), without random flipping."""
        try:
            with Image.open(os.fsdecode(self.files[i])) as img:
                img.load()
                img = adm_center_crop(to_rgb(ImageOps.exif_transpose(img), self.background), self.image_size)
        except Exception as e:  # Pillow raises many types by format
            raise DataError(f"cannot read image {os.fsdecode(self.files[i])}: {type(e).__name__}: {e}") from None
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x.flip(-1) if mirrored else x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        mirrored = self.flip and bool(torch.rand(()) < 0.5)  # each worker's torch RNG is seeded by the DataLoader
        return self.load(i, mirrored=mirrored), self.labels[i]


def image_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    workers: int = 4,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` with ``workers`` processes (0: in the main process), seeded."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


class LazyImages:
    """Stands in for the uint8 [N, 3, H, W] tensor of an :class:`~benchkit.data.base.ImageData`: indexing with an
    int, a slice or an index tensor decodes just those images (in a thread pool: Pillow releases the GIL), so
    the in-memory code paths (batches by index, ``subset``) work unchanged on folders larger than memory."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, folder: LazyImageFolder, threads: int = 8) -> None:
        self.folder, self.threads = folder, threads
        self.shape = torch.Size((len(folder), 3, folder.image_size, folder.image_size))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, int):
            return self.folder.load(key)
        rows = range(len(self))[key] if isinstance(key, slice) else torch.as_tensor(key).reshape(-1).tolist()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            images = list(pool.map(self.folder.load, rows))
        if not images:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        return torch.stack(images)
