"""The ``Extractor``: one feature network as benchkit and torch-fidelity both use it, plus file and hash helpers.

Every feature network runs through torch-fidelity's ``FeatureExtractorBase`` contract, in benchkit's own passes as
well as in ``torch_fidelity.calculate_metrics``. Each is registered there under a name holding its weights' sha256,
because torch-fidelity keys its on-disk cache by names only and would otherwise serve statistics of older weights.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from benchkit.core.errors import ConfigError
from benchkit.core.files import file_sha256

# ---------------------------------------------------------------------------------------------- small helpers


def safe_name(text: str) -> str:
    """``text`` with everything but letters, digits, '.', '_' and '-' replaced by '_' (file and registry names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@functools.lru_cache(maxsize=64)
def _sha256_file_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (memoised per path, size and mtime)."""
    st = os.stat(path)
    return _sha256_file_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def content_hash(images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """Hex sha256 of an image tensor's shape and bytes (and of the labels when given)."""
    h = hashlib.sha256(repr((tuple(images.shape), str(images.dtype))).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- torch-fidelity side


def register_with_fidelity(name: str, cls: type) -> None:
    """Register ``cls`` under ``name`` in torch-fidelity once; re-registering the same pair is a no-op."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    existing = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if existing is None:
        torch_fidelity.register_feature_extractor(name, cls)
    else:
        assert existing is cls, f"torch-fidelity name {name!r} is already taken by {existing}"


# ---------------------------------------------------------------------------------------------- the extractor


class Extractor:
    """One feature network, usable directly (``features``, ``logits``) and by torch-fidelity (``fidelity_name``).

    ``tag`` goes into result tables; ``weights_hash`` identifies the weights (the file's sha256 unless the network
    gives a digest of its own); ``num_classes`` is the number of dataset classes its logits cover (None for
    Inception, whose 1008 ImageNet logits say nothing about the dataset's labels). ``logits_layer`` None: a network
    without logits (DINOv2), so no IS and no class accuracy; ``features_and_logits`` then gives None for the logits.
    """

    def __init__(
        self,
        *,
        tag: str,
        fidelity_name: str,
        fidelity_class: type,
        weights_path: Path,
        feature_layer: str,
        logits_layer: str | None,
        num_classes: int | None,
        device: torch.device,
        batch_size: int,
        info: dict | None = None,
        weights_hash: str | None = None,
    ) -> None:
        self.tag, self.fidelity_name, self.fidelity_class = tag, fidelity_name, fidelity_class
        self.weights_path = Path(weights_path)
        self.weights_hash = weights_hash or sha256_file(self.weights_path)
        self.feature_layer, self.logits_layer = feature_layer, logits_layer
        self.num_classes, self.device, self.batch_size = num_classes, torch.device(device), batch_size
        self.info = dict(info or {})
        self._module: nn.Module | None = None
        register_with_fidelity(fidelity_name, fidelity_class)

    def __repr__(self) -> str:
        return f"Extractor({self.tag}, {self.weights_path})"

    @property
    def cache_id(self) -> str:
        """A file-name-safe id that changes with the weights."""
        return safe_name(self.fidelity_name)

    @property
    def has_logits(self) -> bool:
        """True when the network has a logits layer (IS and class accuracy can be computed)."""
        return self.logits_layer is not None

    @property
    def layers(self) -> list[str]:
        """The layers the torch-fidelity module outputs, in order: features, then logits if any."""
        return [self.feature_layer] if self.logits_layer is None else [self.feature_layer, self.logits_layer]

    @property
    def module(self) -> nn.Module:
        """The torch-fidelity module (loaded on first use), in eval mode on ``device``."""
        if self._module is None:
            try:
                m = self.fidelity_class(
                    self.fidelity_name,
                    self.layers,
                    feature_extractor_weights_path=str(self.weights_path),
                )
            except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
                raise ConfigError(
                    f"could not load feature weights {self.weights_path} ({type(e).__name__}: {e}); the file may be "
                    "truncated or for another network: replace it"
                ) from None
            self._module = m.requires_grad_(False).eval().to(self.device)
        return self._module

    def fidelity_kwargs(self) -> dict[str, Any]:
        """The torch-fidelity keyword arguments that select this network, its weights and layers (no IS layer for a
        network without logits: ask torch-fidelity for ``isc`` only when ``has_logits``)."""
        out = {
            "feature_extractor": self.fidelity_name,
            "feature_extractor_weights_path": str(self.weights_path),
            "feature_layer_fid": self.feature_layer,
            "feature_layer_kid": self.feature_layer,
            "feature_layer_prc": self.feature_layer,
        }
        if self.logits_layer is not None:
            out["feature_layer_isc"] = self.logits_layer
        return out

    @torch.inference_mode()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 [N,3,H,W] -> (features float32 [N,D], logits float32 [N,K] or None without logits) on the CPU."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            out = self.module(images[i : i + self.batch_size].to(self.device))
            feats.append(out[0].float().cpu())
            if self.has_logits:
                logits.append(out[1].float().cpu())
        return torch.cat(feats), (torch.cat(logits) if self.has_logits else None)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,H,W] -> float32 [N,D] (the FID/KID/PR layer)."""
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,H,W] -> float32 [N,K] (the IS layer); ConfigError for a network without logits."""
        logits = self.features_and_logits(images)[1]
        if logits is None:
            raise ConfigError(f"features {self.tag} have no logits (no IS, no class accuracy)")
        return logits
