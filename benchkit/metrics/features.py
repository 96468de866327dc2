"""Feature networks for generation metrics: torch-fidelity's Inception-V3, or a classifier trained on the dataset.

FID (Heusel et al. 2017, arXiv 1706.08500), IS (Salimans et al. 2016, arXiv 1606.03498), KID (Binkowski et al. 2018,
arXiv 1801.01401) and precision/recall (Kynkaanniemi et al. 2019, arXiv 1904.06991) all read the features of one
network. Three choices are registered in ``benchkit.registry.FEATURES``:

- ``inception``: torch-fidelity's port of the 2015-12-05 TF Inception-V3 (Szegedy et al. 2015, arXiv 1512.00567);
  pool3 (2048-d) for FID/KID/PR, the 1008-way logits without bias for IS. Weights come from a local file only.
- ``dataset``: a small CNN classifier trained on the dataset's train split and cached on disk (safetensors + json)
  under a fingerprint of (dataset, split, size, image content hash, classifier config). Its pooled last-conv features
  serve FID/KID/PR, its logits IS and the class accuracy of samples.
- ``auto``: ``inception`` when its weights are on disk, else ``dataset``.

Both networks run through torch-fidelity's ``FeatureExtractorBase`` contract, in benchkit's own passes as well as in
``torch_fidelity.calculate_metrics``. They are registered there under a name holding the weights' sha256, because
torch-fidelity keys its on-disk cache by names only and would otherwise serve statistics of older weights.

Deviations:
- Never downloads. torch-fidelity fetches Inception weights from GitHub when no path is given; benchkit always passes
  a path and raises ConfigError when the file is missing.
- ``dataset`` numbers compare only between rows with the same ``features`` tag, never with published Inception FIDs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchkit.data.base import ImageData, to_float
from benchkit.errors import ConfigError
from benchkit.registry import FEATURES

log = logging.getLogger(__name__)

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries the sha256 prefix
INCEPTION_ENV = "BENCHKIT_INCEPTION_WEIGHTS"
_CACHE_VERSION = 1  # bump when the classifier architecture or training loop changes


# ---------------------------------------------------------------------------------------------- small helpers


def safe_name(text: str) -> str:
    """``text`` with everything but letters, digits, '.', '_' and '-' replaced by '_' (file and registry names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


@functools.lru_cache(maxsize=64)
def _sha256_file_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- dataset classifier


class ClassifierCNN(nn.Module):
    """Five 3x3 conv + BatchNorm + ReLU layers (two of stride 2), global average pool, linear classifier."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        plan = [(3, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1), (2 * width, 4 * width, 2),
                (4 * width, 4 * width, 1)]
        layers: list[nn.Module] = []
        for cin, cout, stride in plan:
            layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(4 * width, num_classes)
        self.width, self.num_classes = width, num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """float [B,3,H,W] in [-1,1] -> pooled features [B, 4*width]."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float [B,3,H,W] in [-1,1] -> logits [B, num_classes]."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class DatasetCNNConfig:
    """Options of the ``dataset`` feature network (the classifier and its training)."""

    width: int = 16  # channels of the first conv; features have 4 * width dims
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    shift: int = 2  # random translation augmentation, in pixels
    flip: bool = False  # horizontal flips: only for datasets whose classes are mirror-invariant
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("width", 1), ("steps", 1), ("batch_size", 2), ("shift", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


def classifier_fingerprint(data: ImageData, cfg: DatasetCNNConfig) -> str:
    """16 hex digits identifying (dataset name, split, size, image content, classifier config)."""
    train_cfg = {f.name: getattr(cfg, f.name) for f in fields(DatasetCNNConfig)}
    payload = {"dataset": data.name, "split": data.split, "n": len(data), "version": _CACHE_VERSION,
               "content": content_hash(data.images, data.labels), "config": train_cfg}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random offset in [-max_shift, max_shift] pixels (reflect padding)."""
    B, C, H, W = x.shape
    s = min(max_shift, H - 1, W - 1)
    if s <= 0:
        return x
    padded = F.pad(x, (s, s, s, s), mode="reflect")  # [B, C, H+2s, W+2s]
    dy = torch.randint(0, 2 * s + 1, (B,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * s + 1, (B,), generator=g).to(x.device)
    rows = dy[:, None] + torch.arange(H, device=x.device)  # [B, H]
    cols = dx[:, None] + torch.arange(W, device=x.device)  # [B, W]
    b = torch.arange(B, device=x.device)[:, None, None]
    out = padded[b, :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    correct = 0
    for i in range(0, len(images), 512):
        x = to_float(images[i : i + 512].to(device))
        correct += int((net(x).argmax(1).cpu() == labels[i : i + 512]).sum())
    return correct / max(1, len(images))


@torch.enable_grad()
def train_classifier(data: ImageData, cfg: DatasetCNNConfig, device: torch.device) -> tuple[ClassifierCNN, dict]:
    """Train the classifier on ``data`` minus a held-out tail (min(1000, N/10) images); returns it and its stats."""
    n_val = min(1000, len(data) // 10) if len(data) >= 50 else 0
    n_train = len(data) - n_val
    images, labels = data.images[:n_train].to(device), data.labels[:n_train].to(device)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(cfg.seed)
        net = ClassifierCNN(cfg.width, data.num_classes).to(device, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
    )
    bs = min(cfg.batch_size, n_train)
    order, pos = torch.randperm(n_train, generator=g), 0
    net.train()
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(cfg.steps):
        # 1. next mini-batch of a shuffled epoch order
        if pos + bs > n_train:
            order, pos = torch.randperm(n_train, generator=g), 0
        idx = order[pos : pos + bs].to(device)
        pos += bs
        x, y = to_float(images[idx]), labels[idx]
        # 2. augmentation: random translation, optional horizontal flip
        x = _shift(x, cfg.shift, g)
        if cfg.flip:
            mirror = (torch.rand(len(x), generator=g) < 0.5).to(device)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        # 3. cross-entropy step with a warmup + cosine learning rate
        loss = F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)  # NHWC: faster convs
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    net.eval()
    if n_val:
        val_acc = _accuracy(net, data.images[n_train:], data.labels[n_train:], device)
    else:
        val_acc = _accuracy(net, data.images, data.labels, device)
    stats = {"val_acc": val_acc, "n_val": n_val, "n_train": n_train, "train_seconds": seconds,
             "final_loss": float(loss.detach()), "chance_acc": 1.0 / data.num_classes}
    log.info("dataset classifier for %s: %d images, %d steps in %.1f s, held-out accuracy %.3f (chance %.3f)",
             data.name, n_train, cfg.steps, seconds, val_acc, 1.0 / data.num_classes)
    if val_acc < min(1.0, 2.0 / data.num_classes):
        log.warning("dataset classifier reached only %.3f held-out accuracy; its FID/IS are weak signals", val_acc)
    return net, stats


def load_classifier(path: Path) -> ClassifierCNN:
    """Rebuild a ClassifierCNN from a safetensors file written by ``cached_classifier``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    net = ClassifierCNN(int(meta["width"]), int(meta["num_classes"]))
    net.load_state_dict(state)
    return net.eval()


def cached_classifier(
    data: ImageData, cfg: DatasetCNNConfig, cache_dir: Path, device: torch.device
) -> tuple[Path, dict]:
    """Path of the classifier weights for (data, cfg) under ``cache_dir/features``, training them on a miss."""
    from filelock import FileLock
    from safetensors.torch import save_file

    fp = classifier_fingerprint(data, cfg)
    root = Path(cache_dir) / "features"
    root.mkdir(parents=True, exist_ok=True)
    stem = f"dataset-cnn-{safe_name(data.name)}-{fp}"
    wpath, jpath = root / f"{stem}.safetensors", root / f"{stem}.json"
    with FileLock(str(root / f"{stem}.lock")):  # one trainer per fingerprint, even across processes
        if wpath.is_file() and jpath.is_file():
            meta = json.loads(jpath.read_text())
            if meta.get("weights_sha256") == sha256_file(wpath):
                log.debug("using cached dataset classifier %s", wpath)
                return wpath, meta
            log.warning("cached classifier %s does not match its json (edited or truncated); retraining", wpath)
        net, stats = train_classifier(data, cfg, device)
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        tmp = wpath.with_name(f".{wpath.name}.{os.getpid()}.tmp")
        save_file(state, str(tmp), metadata={"width": str(cfg.width), "num_classes": str(data.num_classes)})
        os.replace(tmp, wpath)
        meta = {"fingerprint": fp, "dataset": data.name, "split": data.split, "n_images": len(data),
                "class_names": list(data.class_names), "image_size": data.image_size,
                "config": asdict(cfg), "weights_sha256": sha256_file(wpath), **stats}
        _atomic_write_text(jpath, json.dumps(meta, indent=2))
    return wpath, meta


# ---------------------------------------------------------------------------------------------- torch-fidelity side


@functools.lru_cache(maxsize=1)
def fidelity_cnn_class() -> type:
    """The torch-fidelity FeatureExtractorBase subclass wrapping ClassifierCNN (built lazily: torch-fidelity
    imports torchvision, which costs seconds that ``benchkit components`` should not pay)."""
    from torch_fidelity import FeatureExtractorBase

    class FidelityDatasetCNN(FeatureExtractorBase):
        """ClassifierCNN for torch-fidelity: features 'feat' (FID/KID/PRC) and 'logits' (ISC)."""

        def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                     **kwargs: Any) -> None:
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"feature extractor {name!r} needs feature_extractor_weights_path")
            self.net = load_classifier(Path(feature_extractor_weights_path))

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
            feat = self.net.features(to_float(x))
            out = {"feat": feat, "logits": self.net.head(feat)}
            return tuple(out[k] for k in self.features_list)  # requested order, as torch-fidelity zips it

    return FidelityDatasetCNN


def _inception_class() -> type:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3


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

    ``tag`` goes into result tables; ``num_classes`` is the number of dataset classes its logits cover (None for
    Inception, whose 1008 ImageNet logits say nothing about the dataset's labels).
    """

    def __init__(self, *, tag: str, fidelity_name: str, fidelity_class: type, weights_path: Path,
                 feature_layer: str, logits_layer: str, num_classes: int | None, device: torch.device,
                 batch_size: int, info: dict | None = None) -> None:
        self.tag, self.fidelity_name, self.fidelity_class = tag, fidelity_name, fidelity_class
        self.weights_path = Path(weights_path)
        self.weights_hash = sha256_file(self.weights_path)
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
    def module(self) -> nn.Module:
        """The torch-fidelity module (loaded on first use), in eval mode on ``device``."""
        if self._module is None:
            try:
                m = self.fidelity_class(self.fidelity_name, [self.feature_layer, self.logits_layer],
                                        feature_extractor_weights_path=str(self.weights_path))
            except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
                raise ConfigError(
                    f"could not load feature weights {self.weights_path} ({type(e).__name__}: {e}); the file may be "
                    "truncated or for another network: replace it"
                ) from None
            self._module = m.requires_grad_(False).eval().to(self.device)
        return self._module

    def fidelity_kwargs(self) -> dict[str, Any]:
        """The torch-fidelity keyword arguments that select this network, its weights and layers."""
        return {"feature_extractor": self.fidelity_name, "feature_extractor_weights_path": str(self.weights_path),
                "feature_layer_isc": self.logits_layer, "feature_layer_fid": self.feature_layer,
                "feature_layer_kid": self.feature_layer, "feature_layer_prc": self.feature_layer}

    @torch.inference_mode()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [N,3,H,W] -> (features float32 [N,D], logits float32 [N,K]) on the CPU."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            f, lg = self.module(images[i : i + self.batch_size].to(self.device))
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
        return torch.cat(feats), torch.cat(logits)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,H,W] -> float32 [N,D] (the FID/KID/PR layer)."""
        return self.features_and_logits(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N,3,H,W] -> float32 [N,K] (the IS layer)."""
        return self.features_and_logits(images)[1]


# ---------------------------------------------------------------------------------------------- registered factories


@dataclass(frozen=True)
class InceptionConfig:
    """Options of the ``inception`` feature network."""

    weights_path: str | None = None  # else $BENCHKIT_INCEPTION_WEIGHTS, else the torch.hub checkpoint cache
    batch_size: int = 50

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class AutoConfig(DatasetCNNConfig):
    """Options of ``auto``: Inception's weights path, and the classifier used when those weights are missing."""

    weights_path: str | None = None


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


def _missing_inception(where: str) -> ConfigError:
    return ConfigError(
        f"Inception-V3 weights not found ({where}); benchkit never downloads. Put torch-fidelity's {INCEPTION_FILE} "
        f"at {hub_inception_path()}, or point the features option weights_path (eval.inception_weights) or "
        f"${INCEPTION_ENV} at the file, or use features 'dataset' (a classifier trained on the dataset)"
    )


@FEATURES.register("inception", config=InceptionConfig)
def inception_features(cfg: InceptionConfig, *, train_data: ImageData | None = None, cache_dir: Path | None = None,
                       device: torch.device | None = None) -> Extractor:
    """Inception-V3 of torch-fidelity (pool3 2048-d, logits for IS) from a local weights file; never downloads."""
    del train_data, cache_dir
    path, where = find_inception_weights(cfg.weights_path)
    if path is None:
        raise _missing_inception(where)
    digest = sha256_file(path)
    # The standard file's sha256 starts with the prefix in its name; other weights are marked in the tag.
    tag = "inception-v3" if digest.startswith(INCEPTION_SHA256_PREFIX) else f"inception-v3@{digest[:8]}"
    return Extractor(tag=tag, fidelity_name=f"benchkit-inception-v3-{digest[:16]}", fidelity_class=_inception_class(),
                     weights_path=path, feature_layer="2048", logits_layer="logits_unbiased", num_classes=None,
                     device=device or torch.device("cpu"), batch_size=cfg.batch_size, info={"weights": str(path)})


@FEATURES.register("dataset", config=DatasetCNNConfig)
def dataset_features(cfg: DatasetCNNConfig, *, train_data: ImageData | None = None, cache_dir: Path | None = None,
                     device: torch.device | None = None) -> Extractor:
    """Small CNN classifier trained on the dataset's train split (cached); offline features for FID/IS/KID/PR."""
    if train_data is None:
        raise ConfigError("features 'dataset' needs the training split (train_data) to train its classifier")
    if cache_dir is None:
        raise ConfigError("features 'dataset' needs a cache_dir for its classifier weights")
    device = device or torch.device("cpu")
    path, meta = cached_classifier(train_data, cfg, Path(cache_dir), device)
    digest = sha256_file(path)
    return Extractor(tag=f"dataset-cnn@{digest[:8]}", fidelity_name=f"benchkit-dataset-cnn-{digest[:16]}",
                     fidelity_class=fidelity_cnn_class(), weights_path=path, feature_layer="feat",
                     logits_layer="logits", num_classes=train_data.num_classes, device=device, batch_size=256,
                     info=meta)


@FEATURES.register("auto", config=AutoConfig)
def auto_features(cfg: AutoConfig, *, train_data: ImageData | None = None, cache_dir: Path | None = None,
                  device: torch.device | None = None) -> Extractor:
    """Inception-V3 when its weights are on disk, else the dataset classifier (the table names which)."""
    path, where = find_inception_weights(cfg.weights_path)
    if path is not None:
        return inception_features(InceptionConfig(weights_path=str(path)), device=device)
    if cfg.weights_path or os.environ.get(INCEPTION_ENV):  # a named file that is missing is a mistake
        raise _missing_inception(where)
    log.info("features 'auto': no Inception-V3 weights at %s; using a classifier trained on the dataset", where)
    dataset_cfg = DatasetCNNConfig(**{f.name: getattr(cfg, f.name) for f in fields(DatasetCNNConfig)})
    return dataset_features(dataset_cfg, train_data=train_data, cache_dir=cache_dir, device=device)


def load_extractor(name: str, *, train_data: ImageData | None, cache_dir: Path, device: torch.device,
                   weights_path: str | None = None, options: dict[str, Any] | None = None) -> Extractor:
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
    return FEATURES.create(name, train_data=train_data, cache_dir=Path(cache_dir), device=torch.device(device),
                           **opts)
