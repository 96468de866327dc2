"""The in-memory image dataset every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageData:
    """Images as uint8 [N, 3, H, W] (RGB, 0..255) with int64 labels [N] in [0, num_classes)."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4 and self.images.shape[1] == 3, (
            f"images must be uint8 [N,3,H,W], got {self.images.dtype} {tuple(self.images.shape)}"
        )
        assert self.labels.shape == (self.images.shape[0],), "one label per image"

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Side length H (images are square)."""
        return int(self.images.shape[-1])

    def subset(self, n: int) -> ImageData:
        """The first ``n`` images (splits are already shuffled deterministically)."""
        return ImageData(self.name, self.split, self.images[:n], self.labels[:n], self.class_names)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded)."""
    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
