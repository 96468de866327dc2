"""Load one split of a registered dataset by name (``imagefolder:PATH`` included).

>>> data = load_dataset("shapes", split="test", num_test=20)
>>> tuple(data.images.shape), data.images.dtype, data.num_classes
((20, 3, 32, 32), torch.uint8, 10)
"""

from __future__ import annotations

import dataclasses
from typing import Any

from benchkit.core.errors import ConfigError
from benchkit.core.registry import DATASETS
from benchkit.data.base import ImageData
from benchkit.data.shapes import Split, check_split


def load_dataset(
    name: str, *, split: Split, root: str | None = None, image_size: int = 32, **options: Any
) -> ImageData:
    """Load one split of a registered dataset; ``NAME:PATH`` passes PATH as the ``path`` option (imagefolder:PATH).

    Args:
        name: a registered name (``benchkit components datasets``) or ``imagefolder:PATH``.
        split: ``"train"`` or ``"test"`` (the held-out split that evaluation compares against).
        root: data root for file-backed datasets (the CLI's ``--data-root``); see ``default_data_root``.
        image_size: side of the square images returned.
        options: fields of the dataset's config dataclass (e.g. ``num_train`` for shapes, ``download`` for mnist).
    """
    check_split(split)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    base, colon, path = name.partition(":")
    if colon:
        entry = DATASETS.get(base)  # an unknown name lists the valid ones
        fields = {f.name for f in dataclasses.fields(entry.config)} if entry.config is not None else set()
        if "path" not in fields:
            takes_path = [n for n in DATASETS.names() if _has_path(n)]
            raise ConfigError(
                f"dataset {base!r} takes no path, so {name!r} is invalid; NAME:PATH works for: {', '.join(takes_path)}"
            )
        if not path:
            raise ConfigError(f"dataset name {name!r} has an empty path; use {base}:PATH")
        if options.get("path", path) != path:
            raise ConfigError(f"dataset {name!r} also got path={options['path']!r}; give the path once")
        options["path"] = path
    data: ImageData = DATASETS.create(base, split=split, root=root, image_size=image_size, **options)
    return data


def _has_path(name: str) -> bool:
    config = DATASETS.get(name).config
    return config is not None and any(f.name == "path" for f in dataclasses.fields(config))
