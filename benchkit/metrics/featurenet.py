"""The ``dataset`` feature network: classifier features, colour statistics and edge layout, standardised and joined.

FID charges for a distortion in proportion to how far it moves the features. A classifier of colour-free classes
moves little under colour changes and, trained without degradation, a lot under faint noise. This network joins three
blocks so that colour, structure and class content each count (see ``benchkit.metrics.battery`` for the check):

- ``colour`` and ``edges``: fixed appearance statistics (``benchkit.metrics.appearance``);
- ``cnn``: the pooled features of the dataset classifier (``benchkit.metrics.classifier``), trained with faint noise
  and blur so that barely visible changes do not swing them. Its logits serve IS and the class accuracy of samples.

Each block is centred and divided by the square root of its total variance on the training images, so every block
has total variance one, then multiplied by its weight (``colour_weight``, ``edge_weight``, ``cnn_weight``) and by
``FEATURE_SCALE``. A block that barely varies on the training images (total variance below ``MIN_BLOCK_VARIANCE``,
e.g. edges when every image has the same layout) is divided by the floor's square root instead, with a warning:
otherwise the first sample that differs there gets features of 1e5 and an FID of 1e11, whose covariance square
root no longer holds in float64. The network, its standardisation and its config are cached on disk (safetensors + json)
under a fingerprint of (dataset, split, size, image content, config).

The ``features`` tag (``dataset-fused@<sha8>``) is ``feature_digest`` of the cached tensors: what fixes the features
and nothing else, so a rebuild that gives the same weights gives the same tag and reuses reference statistics. The
safetensors file's own bytes are not hashed, since its header lists metadata keys in a per-process random order.

Deviations:
- Not a published feature network: its FIDs compare only between rows with the same ``features`` tag.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchkit.core.files import atomic_write_text
from benchkit.data.base import ImageData, to_float
from benchkit.metrics.appearance import COLOUR_DIM, EDGE_DIM, colour_block, edge_block
from benchkit.metrics.classifier import (
    CACHE_VERSION,
    ClassifierCNN,
    DatasetCNNConfig,
    classifier_fingerprint,
    train_classifier,
)
from benchkit.metrics.extractor import safe_name, sha256_file

log = logging.getLogger(__name__)
FEATURE_SCALE = 10.0  # puts FIDs of visible failures in the tens, like Inception FIDs
MIN_BLOCK_VARIANCE = 1e-4  # raw total variance of a block below which it counts as constant on the training images
_FIT_IMAGES = 5000  # training images that fix the standardisation


class DatasetFeatureNet(nn.Module):
    """Float images [B,3,H,W] in [-1,1] -> (standardised features [B,D], logits [B,K]); D = 72 + 16 + 4*width."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = ClassifierCNN(width, num_classes)
        dim = COLOUR_DIM + EDGE_DIM + 4 * width
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @property
    def blocks(self) -> dict[str, slice]:
        """Which feature columns hold which block."""
        return {
            "colour": slice(0, COLOUR_DIM),
            "edges": slice(COLOUR_DIM, COLOUR_DIM + EDGE_DIM),
            "cnn": slice(COLOUR_DIM + EDGE_DIM, None),
        }

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unstandardised blocks concatenated [B,D], logits [B,K])."""
        cnn = self.classifier.features(x)
        return torch.cat([colour_block(x), edge_block(x), cnn], dim=1), self.classifier.head(cnn)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float [B,3,H,W] in [-1,1] -> (features [B,D], logits [B,K])."""
        feats, logits = self.raw(x)
        return (feats - self.shift) * self.scale, logits

    @torch.no_grad()
    def fit_standardisation(self, images: torch.Tensor, weights: dict[str, float], batch_size: int = 500) -> None:
        """Centre each block and give it total variance ``(FEATURE_SCALE * weight)**2`` on uint8 ``images``."""
        device = self.shift.device
        raw = torch.cat(
            [
                self.raw(to_float(images[i : i + batch_size].to(device)))[0].double()
                for i in range(0, len(images), batch_size)
            ]
        )
        mean, var = raw.mean(0), raw.var(0)
        scale = torch.ones_like(mean)
        for name, cols in self.blocks.items():
            total = float(var[cols].sum())
            if total < MIN_BLOCK_VARIANCE:
                log.warning(
                    "feature block %r barely varies on the %d training images (total variance %.3g); "
                    "scaling it as if it were %.0e",
                    name,
                    len(images),
                    total,
                    MIN_BLOCK_VARIANCE,
                )
            scale[cols] = FEATURE_SCALE * weights[name] / max(total, MIN_BLOCK_VARIANCE) ** 0.5
        self.shift.copy_(mean.float())
        self.scale.copy_(scale.float())


def block_weights(cfg: DatasetCNNConfig) -> dict[str, float]:
    """The weight of each feature block, by block name."""
    return {"colour": cfg.colour_weight, "edges": cfg.edge_weight, "cnn": cfg.cnn_weight}


def feature_digest(state: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> str:
    """Hex sha256 of what fixes the features: the cache version, ``FEATURE_SCALE``, the block ``weights`` and every
    tensor of ``state`` (classifier weights and the standardisation's shift and scale) as name, dtype, shape and
    bytes, in sorted name order. File metadata, timing and training stats do not enter."""
    head = {"version": CACHE_VERSION, "feature_scale": FEATURE_SCALE, "block_weights": dict(sorted(weights.items()))}
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype (bf16 included)
    return h.hexdigest()


@functools.lru_cache(maxsize=16)
def _stored_digest(path: str, size: int, mtime_ns: int, weights: tuple[tuple[str, float], ...]) -> str:
    from safetensors.torch import load_file

    return feature_digest(load_file(path), dict(weights))


def stored_feature_digest(path: Path, cfg: DatasetCNNConfig) -> str:
    """``feature_digest`` of the tensors in a cached feature network file (memoised per path, size and mtime)."""
    st = os.stat(path)
    return _stored_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, tuple(block_weights(cfg).items()))


def build_feature_net(data: ImageData, cfg: DatasetCNNConfig, device: torch.device) -> tuple[DatasetFeatureNet, dict]:
    """Train the classifier on ``data`` and fit the block standardisation on its training images."""
    classifier, stats = train_classifier(data, cfg, device)
    net = DatasetFeatureNet(cfg.width, data.num_classes).to(device)
    net.classifier.load_state_dict(classifier.state_dict())
    net.eval()
    n_fit = min(_FIT_IMAGES, stats["n_train"])
    net.fit_standardisation(data.images[:n_fit], block_weights(cfg))
    return net, stats


def load_feature_net(path: Path) -> DatasetFeatureNet:
    """Rebuild a DatasetFeatureNet from a safetensors file written by ``cached_feature_net``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    net = DatasetFeatureNet(int(meta["width"]), int(meta["num_classes"]))
    net.load_state_dict(state)
    return net.eval()


def cached_feature_net(
    data: ImageData, cfg: DatasetCNNConfig, cache_dir: Path, device: torch.device
) -> tuple[Path, dict]:
    """Path of the feature network for (data, cfg) under ``cache_dir/features``, building it on a miss."""
    from filelock import FileLock
    from safetensors.torch import save_file

    fp = classifier_fingerprint(data, cfg)
    root = Path(cache_dir) / "features"
    root.mkdir(parents=True, exist_ok=True)
    stem = f"dataset-fused-{safe_name(data.name)}-{fp}"
    wpath, jpath = root / f"{stem}.safetensors", root / f"{stem}.json"
    with FileLock(str(root / f"{stem}.lock")):  # one trainer per fingerprint, even across processes
        if wpath.is_file() and jpath.is_file():
            meta = json.loads(jpath.read_text())
            if meta.get("weights_sha256") == sha256_file(wpath):
                log.debug("using cached dataset feature network %s", wpath)
                return wpath, meta
            log.warning("cached feature network %s does not match its json (edited or truncated); rebuilding", wpath)
        net, stats = build_feature_net(data, cfg, device)
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        tmp = wpath.with_name(f".{wpath.name}.{os.getpid()}.tmp")
        save_file(state, str(tmp), metadata={"width": str(cfg.width), "num_classes": str(data.num_classes)})
        os.replace(tmp, wpath)
        meta = {
            "fingerprint": fp,
            "dataset": data.name,
            "split": data.split,
            "n_images": len(data),
            "class_names": list(data.class_names),
            "image_size": data.image_size,
            "config": asdict(cfg),
            "weights_sha256": sha256_file(wpath),
            "feature_sha256": feature_digest(state, block_weights(cfg)),
            **stats,
        }
        atomic_write_text(jpath, json.dumps(meta, indent=2))
    return wpath, meta


@functools.lru_cache(maxsize=1)
def fidelity_feature_class() -> type:
    """The torch-fidelity FeatureExtractorBase subclass wrapping DatasetFeatureNet (built lazily: torch-fidelity
    imports torchvision, which costs seconds that ``benchkit components`` should not pay)."""
    from torch_fidelity import FeatureExtractorBase

    class FidelityDatasetFeatures(FeatureExtractorBase):
        """DatasetFeatureNet for torch-fidelity: features 'feat' (FID/KID/PRC) and 'logits' (ISC)."""

        def __init__(
            self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any
        ) -> None:
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"feature extractor {name!r} needs feature_extractor_weights_path")
            self.net = load_feature_net(Path(feature_extractor_weights_path))

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("feat", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "logits" if metric == "isc" else "feat"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3, (
                f"expected uint8 [B,3,H,W], got {x.dtype} {tuple(x.shape)}"
            )
            feat, logits = self.net(to_float(x))
            out = {"feat": feat, "logits": logits}
            return tuple(out[k] for k in self.features_list)  # requested order, as torch-fidelity zips it

    return FidelityDatasetFeatures
