"""The metric objects a run config asks for: the shared cache directory, the feature extractor and the name of a
held-out reference (one place each, so every caller scores against the same cached statistics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchkit.core.config import RunConfig
from benchkit.core.distributed import pick_device
from benchkit.data.base import ImageData
from benchkit.metrics.features import extractor_options, load_extractor


def cache_dir(cfg: RunConfig) -> Path:
    """Shared cache for feature networks and reference statistics."""
    return Path(cfg.out_dir) / "_cache"


def config_extractor(cfg: RunConfig, train: ImageData) -> Any:
    """The feature extractor of ``eval.features`` (the ``dataset`` one is trained on ``train`` once and cached)."""
    return load_extractor(
        cfg.eval.features,
        train_data=train,
        cache_dir=cache_dir(cfg),
        device=pick_device(cfg.device),
        weights_path=cfg.eval.inception_weights,
        options=extractor_options(cfg.eval),
    )


def reference_key(cfg: RunConfig, n: int) -> str:
    """The cache name of the first ``n`` held-out images of the config's dataset."""
    return f"{cfg.data.name}-test-{n}"
