"""The ``inception`` feature network: torch-fidelity's Inception-V3 from a local weights file, never downloaded.

torch-fidelity's port of the 2015-12-05 TF Inception-V3 (Szegedy et al. 2015, arXiv 1512.00567): pool3 (2048-d) for
FID/KID/PR, the 1008-way logits without bias for IS.

Deviations:
- Never downloads. torch-fidelity fetches Inception weights from GitHub when no path is given; benchkit always passes
  a path and raises ConfigError when the file is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from benchkit.core.errors import ConfigError
from benchkit.core.registry import FEATURES
from benchkit.data.base import ImageData
from benchkit.metrics.extractor import Extractor, sha256_file

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries the sha256 prefix
INCEPTION_ENV = "BENCHKIT_INCEPTION_WEIGHTS"


def inception_class() -> type:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


@dataclass(frozen=True)
class InceptionConfig:
    """Options of the ``inception`` feature network."""

    weights_path: str | None = None  # else $BENCHKIT_INCEPTION_WEIGHTS, else the torch.hub checkpoint cache
    batch_size: int = 50

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def hub_inception_path() -> Path:
    """Where torch-fidelity's Inception weights sit in the torch.hub checkpoint cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def find_inception_weights(weights_path: str | None) -> tuple[Path | None, str]:
    """(existing weights file or None, where it was looked for): option, then env var, then the hub cache."""
    if weights_path:
        return (Path(weights_path) if Path(weights_path).is_file() else None), f"option weights_path={weights_path}"
    env = os.environ.get(INCEPTION_ENV)
    if env:
        return (Path(env) if Path(env).is_file() else None), f"${INCEPTION_ENV}={env}"
    hub = hub_inception_path()
    return (hub if hub.is_file() else None), str(hub)


def missing_inception(where: str) -> ConfigError:
    return ConfigError(
        f"Inception-V3 weights not found ({where}); benchkit never downloads. Put torch-fidelity's {INCEPTION_FILE} "
        f"at {hub_inception_path()}, or point the features option weights_path (eval.inception_weights) or "
        f"${INCEPTION_ENV} at the file, or use features 'dataset' (a classifier trained on the dataset)"
    )


@FEATURES.register("inception", config=InceptionConfig)
def inception_features(
    cfg: InceptionConfig,
    *,
    train_data: ImageData | None = None,
    cache_dir: Path | None = None,
    device: torch.device | None = None,
) -> Extractor:
    """Inception-V3 of torch-fidelity (pool3 2048-d, logits for IS) from a local weights file; never downloads."""
    del train_data, cache_dir
    path, where = find_inception_weights(cfg.weights_path)
    if path is None:
        raise missing_inception(where)
    digest = sha256_file(path)
    # The standard file's sha256 starts with the prefix in its name; other weights are marked in the tag.
    tag = "inception-v3" if digest.startswith(INCEPTION_SHA256_PREFIX) else f"inception-v3@{digest[:8]}"
    return Extractor(
        tag=tag,
        fidelity_name=f"benchkit-inception-v3-{digest[:16]}",
        fidelity_class=inception_class(),
        weights_path=path,
        feature_layer="2048",
        logits_layer="logits_unbiased",
        num_classes=None,
        device=device or torch.device("cpu"),
        batch_size=cfg.batch_size,
        info={"weights": str(path)},
    )
