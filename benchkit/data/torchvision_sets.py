"""``mnist``, ``fashion-mnist`` and ``cifar10``, read from their standard on-disk formats through torchvision.

Nothing is downloaded unless the dataset option ``download=true`` is set; missing files raise one DataError line that
names ``--data-root`` and the expected layout. The data root is ``root`` when given, else ``$BENCHKIT_DATA_ROOT``,
else ``~/.cache/benchkit/datasets``. Expected layouts (torchvision's own):

- mnist: ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (the four files, uncompressed)
- fashion-mnist: the same under ``ROOT/FashionMNIST/raw/``
- cifar10: ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (cifar-10-python.tar.gz extracted)

Pointing ``root`` at the dataset folder itself (``.../MNIST`` or ``.../cifar-10-batches-py``) also works.

Conversion: grayscale is repeated to RGB. MNIST-style 28x28 digits are zero-padded by 2 pixels on each side to
32x32 (the background is black, so padding adds no content and keeps every pixel exact; it also keeps the classic
LeNet framing), then, like CIFAR-10's 32x32 images, resized with antialiased bilinear interpolation when
``image_size`` is not 32. The official train/test splits are kept in their original (already shuffled) order.

Deviations from torchvision: CIFAR-10 files are checked for presence, not md5 (see ``_CIFAR10Files``).
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

from benchkit.core.errors import DataError
from benchkit.core.registry import DATASETS
from benchkit.data.base import ImageData
from benchkit.data.shapes import Split, check_split

log = logging.getLogger(__name__)

_MNIST_FILES = tuple(f"{split}-{kind}-ubyte" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1"))
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
# What torchvision's readers raise on missing, truncated or foreign files (its idx parser uses assert).
_READ_ERRORS = (
    RuntimeError, OSError, ValueError, TypeError, KeyError, EOFError, AssertionError, pickle.UnpicklingError,
)  # fmt: skip


@dataclass(frozen=True)
class TorchvisionConfig:
    """Options of the torchvision-backed datasets."""

    download: bool = False  # fetch the files into the data root when missing (needs network, once)


def default_data_root() -> Path:
    """``$BENCHKIT_DATA_ROOT`` if set, else ``~/.cache/benchkit/datasets``."""
    env = os.environ.get("BENCHKIT_DATA_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "benchkit" / "datasets"


class _CIFAR10Files(CIFAR10):
    """torchvision's CIFAR10 reader that checks the batch files for presence instead of md5.

    Why: the md5 check re-reads all 180 MB on every load, rejects files holding the same arrays in another pickle
    protocol, and makes it impossible to test the real reading code on small files of the real format. Reading
    still validates structure (pickle, 3072 bytes per image, label range); downloads still verify the archive's md5.
    """

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        return all(os.path.isfile(os.path.join(folder, name)) for name in _CIFAR_FILES)

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def resize_square(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 [N, C, H, W] to [N, C, size, size] (chunked to bound memory)."""
    if images.shape[-2:] == (size, size):
        return images
    out = [
        F.interpolate(part.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        for part in images.split(chunk)
    ]
    return torch.cat(out)


def _resolve_root(root: str | None, folder: str) -> Path:
    """The data root; accept a root that is the dataset folder itself (``.../MNIST`` for folder ``MNIST/raw``)."""
    base = Path(root).expanduser() if root is not None else default_data_root()
    top = Path(folder).parts[0]
    if not (base / folder).exists() and base.name == top:
        return base.parent
    return base


def _check_files(name: str, base: Path, folder: str, files: tuple[str, ...], layout: str) -> None:
    """Raise DataError (one line) naming --data-root and the layout when any expected file is missing."""
    missing = [f for f in files if not (base / folder / f).is_file()]
    if not missing:
        return
    archives = sorted(p.name for p in (base / folder).glob("*.gz")) + sorted(p.name for p in base.glob("*.tar.gz"))
    hint = f" (found {', '.join(archives)}: extract it there)" if archives else ""
    raise DataError(
        f"{name} files not found: {base / folder / missing[0]} is missing{hint}; pass --data-root DIR where "
        f"{layout} (place the files there, or download them once with network: dataset option download=true)"
    )


def _mnist_like(
    name: str, cls: type[MNIST], cfg: TorchvisionConfig, split: Split, root: str | None, image_size: int
) -> ImageData:
    check_split(split)
    folder = f"{cls.__name__}/raw"
    base = _resolve_root(root, folder)
    processed = base / cls.__name__ / "processed"
    legacy = (processed / "training.pt").is_file() and (processed / "test.pt").is_file()  # torchvision < 0.9 cache
    if not cfg.download and not legacy:
        layout = f"DIR/{folder}/ holds {', '.join(_MNIST_FILES)} (uncompressed)"
        _check_files(name, base, folder, _MNIST_FILES, layout)
    try:
        ds = cls(str(base), train=split == "train", download=cfg.download)
    except _READ_ERRORS as e:
        raise DataError(f"cannot read {name} from {base / cls.__name__}: {e}".replace("\n", " ")) from None
    digits = ds.data  # uint8 [N, 28, 28]
    if digits.dtype != torch.uint8 or digits.ndim != 3:
        shape = f"{digits.dtype} {tuple(digits.shape)}"
        raise DataError(f"{name} images in {base / folder} are {shape}, not uint8 [N, 28, 28]")
    pad = max(0, (32 - digits.shape[-1]) // 2)
    images = F.pad(digits[:, None], (pad, pad, pad, pad)).expand(-1, 3, -1, -1)  # [N, 3, 32, 32], black border
    return _finish(name, split, resize_square(images, image_size), ds.targets, tuple(cls.classes), base)


def _finish(
    name: str, split: Split, images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], where: Path
) -> ImageData:
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if len(images) == 0:
        raise DataError(f"the {split} split of {name} in {where} is empty")
    if len(labels) != len(images) or labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(
            f"{name} labels in {where} do not match the images ({len(labels)} labels for {len(images)} images, "
            f"range {int(labels.min())}..{int(labels.max())}, {len(classes)} classes)"
        )
    log.debug("loaded %s %s: %d images from %s", name, split, len(images), where)
    return ImageData(name, split, images.contiguous(), labels, classes)


@DATASETS.register("mnist", config=TorchvisionConfig)
def mnist(cfg: TorchvisionConfig, *, split: Split, root: str | None = None, image_size: int = 32) -> ImageData:
    """MNIST handwritten digits (LeCun et al. 1998) via torchvision, padded to 32x32 RGB."""
    return _mnist_like("mnist", MNIST, cfg, split, root, image_size)


@DATASETS.register("fashion-mnist", config=TorchvisionConfig)
def fashion_mnist(cfg: TorchvisionConfig, *, split: Split, root: str | None = None, image_size: int = 32) -> ImageData:
    """Fashion-MNIST clothing images (Xiao et al. 2017) via torchvision, padded to 32x32 RGB."""
    return _mnist_like("fashion-mnist", FashionMNIST, cfg, split, root, image_size)


@DATASETS.register("cifar10", config=TorchvisionConfig)
def cifar10(cfg: TorchvisionConfig, *, split: Split, root: str | None = None, image_size: int = 32) -> ImageData:
    """CIFAR-10 (Krizhevsky 2009): 32x32 RGB photos of 10 object classes, via torchvision."""
    check_split(split)
    folder = _CIFAR10Files.base_folder
    base = _resolve_root(root, folder)
    if not cfg.download:
        layout = f"DIR/{folder}/ holds {', '.join(_CIFAR_FILES)} (cifar-10-python.tar.gz extracted)"
        _check_files("cifar10", base, folder, _CIFAR_FILES, layout)
    try:
        ds = _CIFAR10Files(str(base), train=split == "train", download=cfg.download)
    except _READ_ERRORS as e:
        raise DataError(f"cannot read cifar10 from {base / folder}: {e}".replace("\n", " ")) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)  # [N, 32, 32, 3] -> [N, 3, 32, 32]
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    return _finish("cifar10", split, resize_square(images, image_size), labels, tuple(ds.classes), base)
