"""Feature networks for generation metrics: torch-fidelity's Inception-V3, or a classifier trained on the dataset.

FID (Heusel et al. 2017, arXiv 1706.08500), IS (Salimans et al. 2016, arXiv 1606.03498), KID (Binkowski et al. 2018,
arXiv 1801.01401) and precision/recall (Kynkaanniemi et al. 2019, arXiv 1904.06991) all read the features of one
network. These are registered in ``benchkit.core.registry.FEATURES``:

- ``inception``: torch-fidelity's port of the 2015-12-05 TF Inception-V3 (Szegedy et al. 2015, arXiv 1512.00567);
  pool3 (2048-d) for FID/KID/PR, the 1008-way logits without bias for IS. Weights come from a local file only.
- ``dataset``: fitted to the dataset's train split and cached on disk (``featurenet``): the pooled features of a small
  CNN classifier joined with colour statistics and an edge layout, each block standardised, for FID/KID/PR; the
  classifier's logits for IS and the class accuracy of samples. ``benchkit eval --sanity`` shows, with the
  distortion battery (``battery``), that its FID charges for colour, diversity and structure in proportion.
- ``auto``: ``inception`` when its weights are on disk, else ``dataset``.
- ``dinov2-vit-s-14``, ``dinov2-vit-b-14``, ``dinov2-vit-l-14``: DINOv2's CLS token as dgm-eval computes it
  (``dinov2``); no logits, so no IS and no class accuracy. Their FID is FD-DINOv2 (``dinov2-vit-l-14``: the published
  one), on another scale than Inception's FID: the ``features`` tag keeps them apart.

Every network runs through torch-fidelity's ``FeatureExtractorBase`` contract (``extractor.Extractor``); the
networks themselves live in ``inception``, ``classifier`` + ``appearance`` + ``featurenet``.

Deviations:
- Never downloads. torch-fidelity fetches Inception weights from GitHub when no path is given; benchkit always passes
  a path and raises ConfigError when the file is missing.
- ``dataset`` numbers compare only between rows with the same ``features`` tag, never with published Inception FIDs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from benchkit.core.config import EvalConfig
from benchkit.core.errors import ConfigError
from benchkit.core.registry import FEATURES
from benchkit.data.base import ImageData
from benchkit.metrics.adm import read_adm_batch
from benchkit.metrics.classifier import ClassifierCNN, DatasetCNNConfig, classifier_fingerprint  # noqa: F401
from benchkit.metrics.cmmd import ClipConfig, find_clip_weights
from benchkit.metrics.dinov2 import DINOV2_ARCHS, DinoV2Config, dinov2_extractor_spec, find_dinov2_weights
from benchkit.metrics.extractor import (  # noqa: F401  (re-exported)
    Extractor,
    content_hash,
    register_with_fidelity,
    safe_name,
    sha256_file,
)
from benchkit.metrics.featurenet import (  # noqa: F401  (re-exported)
    cached_feature_net,
    fidelity_feature_class,
    load_feature_net,
    stored_feature_digest,
)
from benchkit.metrics.inception import (  # noqa: F401  (re-exported)
    INCEPTION_ENV,
    INCEPTION_FILE,
    InceptionConfig,
    find_inception_weights,
    hub_inception_path,
    inception_class,
    inception_features,
    missing_inception,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoConfig(DatasetCNNConfig):
    """Options of ``auto``: Inception's weights path, and the classifier used when those weights are missing."""

    weights_path: str | None = None


@FEATURES.register("dataset", config=DatasetCNNConfig)
def dataset_features(
    cfg: DatasetCNNConfig,
    *,
    train_data: ImageData | None = None,
    cache_dir: Path | None = None,
    device: torch.device | None = None,
) -> Extractor:
    """Classifier features + colour statistics + edge layout, fitted to the train split (cached); offline FID/IS."""
    if train_data is None:
        raise ConfigError("features 'dataset' needs the training split (train_data) to train its classifier")
    if cache_dir is None:
        raise ConfigError("features 'dataset' needs a cache_dir for its classifier weights")
    device = device or torch.device("cpu")
    path, meta = cached_feature_net(train_data, cfg, Path(cache_dir), device)
    digest = stored_feature_digest(path, cfg)  # the tensors, not the file's bytes: equal weights, equal tag
    return Extractor(
        tag=f"dataset-fused@{digest[:8]}",
        fidelity_name=f"benchkit-dataset-fused-{digest[:16]}",
        fidelity_class=fidelity_feature_class(),
        weights_path=path,
        feature_layer="feat",
        logits_layer="logits",
        num_classes=train_data.num_classes,
        device=device,
        batch_size=256,
        info=meta,
        weights_hash=digest,
    )


_FALLBACK_NOTED: set[str] = set()


@FEATURES.register("auto", config=AutoConfig)
def auto_features(
    cfg: AutoConfig,
    *,
    train_data: ImageData | None = None,
    cache_dir: Path | None = None,
    device: torch.device | None = None,
) -> Extractor:
    """Inception-V3 when its weights are on disk, else the dataset classifier (the table names which)."""
    path, where = find_inception_weights(cfg.weights_path)
    if path is not None:
        return inception_features(InceptionConfig(weights_path=str(path)), device=device)
    if cfg.weights_path or os.environ.get(INCEPTION_ENV):  # a named file that is missing is a mistake
        raise missing_inception(where)
    say = log.debug if where in _FALLBACK_NOTED else log.info  # once per process: a run builds it for every model
    _FALLBACK_NOTED.add(where)
    say("features 'auto': no Inception-V3 weights at %s; using a classifier trained on the dataset", where)
    dataset_cfg = DatasetCNNConfig(**{f.name: getattr(cfg, f.name) for f in fields(DatasetCNNConfig)})
    return dataset_features(dataset_cfg, train_data=train_data, cache_dir=cache_dir, device=device)


def load_extractor(
    name: str,
    *,
    train_data: ImageData | None,
    cache_dir: Path,
    device: torch.device,
    weights_path: str | None = None,
    options: dict[str, Any] | None = None,
) -> Extractor:
    """Build the feature network ``name`` (inception, dataset, auto or a plugin) with its ``options``.

    ``weights_path`` is the Inception weights file; it is ignored (with a debug note) by networks without that option.
    """
    opts = dict(options or {})
    entry = FEATURES.get(name)
    accepts_path = entry.config is not None and "weights_path" in {f.name for f in fields(entry.config)}
    if weights_path is not None:
        if accepts_path:
            opts.setdefault("weights_path", str(weights_path))
        else:
            log.debug("features %r has no weights_path option; ignoring %s", name, weights_path)
    return FEATURES.create(name, train_data=train_data, cache_dir=Path(cache_dir), device=torch.device(device), **opts)


# ---------------------------------------------------------------------------------------------- DINOv2 features


@dataclass(frozen=True)
class DinoFeaturesConfig:
    """Options of the ``dinov2-vit-*-14`` features (the architecture is the registered name)."""

    weights_file: str | None = None  # else $BENCHKIT_WEIGHTS_DIR/<release file>, else torch.hub's checkpoint cache
    batch_size: int = 64
    resize: str = "pil"  # "pil" as dgm-eval; "torch" stays on the device

    def __post_init__(self) -> None:
        DinoV2Config(weights_file=self.weights_file, batch_size=self.batch_size, resize=self.resize)  # checks values

    def for_arch(self, arch: str) -> DinoV2Config:
        """The network config of ``arch`` with these options."""
        return DinoV2Config(arch=arch, weights_file=self.weights_file, batch_size=self.batch_size, resize=self.resize)


def _register_dinov2(arch: str) -> None:
    def dinov2_features(
        cfg: DinoFeaturesConfig,
        *,
        train_data: ImageData | None = None,
        cache_dir: Path | None = None,
        device: torch.device | None = None,
    ) -> Extractor:
        del train_data, cache_dir
        return Extractor(**dinov2_extractor_spec(cfg.for_arch(arch)), device=device or torch.device("cpu"))

    spec = DINOV2_ARCHS[arch]
    dinov2_features.__doc__ = f"DINOv2 {spec.timm_name} CLS features ({spec.dim}-d, dgm-eval's resize); no IS logits."
    dinov2_features.__name__ = dinov2_features.__qualname__ = f"dinov2_features_{safe_name(arch).replace('-', '_')}"
    FEATURES.register(arch, config=DinoFeaturesConfig)(dinov2_features)


for _arch in DINOV2_ARCHS:
    _register_dinov2(_arch)


def extractor_options(ev: EvalConfig) -> dict[str, Any]:
    """The options ``load_extractor`` needs for ``ev.features`` beyond the Inception path: ``eval.dinov2_weights``
    for the DINOv2 features."""
    if ev.features in DINOV2_ARCHS and ev.dinov2_weights:
        return {"weights_file": ev.dinov2_weights}
    return {}


# ---------------------------------------------------------------------------------------------- checks before compute


def _need_module(module: str, package: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{what} needs the optional package {package} (pip install 'benchkit[protocols]')")


def check_protocol(ev: EvalConfig) -> None:
    """Everything ``eval.protocol``, ``eval.fd_dinov2``, ``eval.cmmd`` and DINOv2 ``eval.features`` need on disk,
    checked before any compute, each failure one ConfigError line: the ADM reference batch (its arrays, shapes and
    dtypes), the DINOv2 and CLIP weights files (naming the file and where to put it) and their optional packages.
    Inception's weights are ``benchkit.training.checks.check_eval``'s."""
    if ev.protocol == "adm" and ev.reference_batch:
        read_adm_batch(ev.reference_batch)
    if (ev.cmmd or ev.fd_dinov2) and ev.reference_stats:
        raise ConfigError(
            "eval.cmmd and eval.fd_dinov2 embed reference images; eval.reference_stats holds statistics only "
            '(unset it, or use eval.protocol = "adm" with eval.reference_batch)'
        )
    archs = dict.fromkeys(a for a in (ev.features, ev.fd_dinov2) if a in DINOV2_ARCHS)
    for arch in archs:
        what = f"eval.fd_dinov2 = {arch!r}" if arch == ev.fd_dinov2 else f"eval.features = {arch!r}"
        _need_module("timm", "timm", what)
        find_dinov2_weights(DinoV2Config(arch=arch, weights_file=ev.dinov2_weights), option="eval.dinov2_weights")
    if ev.cmmd:
        _need_module("open_clip", "open_clip_torch", "eval.cmmd")
        find_clip_weights(ClipConfig(weights_file=ev.clip_weights), option="eval.clip_weights")
