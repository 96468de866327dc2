"""The classifier inside the ``dataset`` feature network: a small CNN trained on the dataset's train split.

Augmentation: random translation, optional flips, and faint blur and noise on half the images each, so that its
features stay put under changes a reader barely sees (Gaussian noise of std 0.02, blur of sigma 0.5 px) while
larger ones still move them. ``featurenet`` combines its pooled features with appearance statistics and caches it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchkit.data.base import ImageData, to_float
from benchkit.metrics.distortions import gaussian_blur
from benchkit.metrics.extractor import content_hash

log = logging.getLogger(__name__)
CACHE_VERSION = 2  # bump when the architecture, training loop or feature layout changes


class ClassifierCNN(nn.Module):
    """Five 3x3 conv + BatchNorm + ReLU layers (two of stride 2), global average pool, linear classifier."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        plan = [
            (3, width, 1),
            (width, 2 * width, 2),
            (2 * width, 2 * width, 1),
            (2 * width, 4 * width, 2),
            (4 * width, 4 * width, 1),
        ]
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
    """Options of the ``dataset`` feature network: the classifier, its training, and the weights of the three blocks."""

    width: int = 16  # channels of the first conv; features have 4 * width dims
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    shift: int = 2  # random translation augmentation, in pixels
    flip: bool = False  # horizontal flips: only for datasets whose classes are mirror-invariant
    noise_std: float = 0.06  # Gaussian noise of std U(0, noise_std) on half the images ([-1,1] units)
    blur_sigma: float = 0.8  # Gaussian blur of sigma U(0, blur_sigma) px on half the images
    colour_weight: float = 1.2  # weight of the colour statistics block in the FID features
    edge_weight: float = 1.0  # weight of the edge layout block
    cnn_weight: float = 1.0  # weight of the classifier's pooled features
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("width", 1), ("steps", 1), ("batch_size", 2), ("shift", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "noise_std", "blur_sigma", "colour_weight", "edge_weight", "cnn_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def classifier_fingerprint(data: ImageData, cfg: DatasetCNNConfig) -> str:
    """16 hex digits identifying (dataset name, split, size, image content, classifier config)."""
    train_cfg = {f.name: getattr(cfg, f.name) for f in fields(DatasetCNNConfig)}
    payload = {
        "dataset": data.name,
        "split": data.split,
        "n": len(data),
        "version": CACHE_VERSION,
        "content": content_hash(data.images, data.labels),
        "config": train_cfg,
    }
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


def degrade(x: torch.Tensor, noise_std: float, blur_sigma: float, g: torch.Generator) -> torch.Tensor:
    """Blur half the images (sigma U(0, blur_sigma)) and add noise to an independent half (std U(0, noise_std)), so
    the classifier's features do not swing on faint pixel changes that a reader barely sees."""
    B = len(x)
    if blur_sigma > 0:
        sigma = float(torch.rand((), generator=g)) * blur_sigma  # one sigma per batch: one separable conv
        pick = (torch.rand(B, generator=g) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(pick, gaussian_blur(x, sigma), x)
    if noise_std > 0:
        std = torch.rand(B, generator=g) * noise_std * (torch.rand(B, generator=g) < 0.5)
        x = x + std.to(x.device)[:, None, None, None] * torch.randn(x.shape, generator=g).to(x.device)
    return x


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
        net = ClassifierCNN(cfg.width, data.num_classes).to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
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
        # 2. augmentation: random translation, optional horizontal flip, faint blur and noise
        x = _shift(x, cfg.shift, g)
        if cfg.flip:
            mirror = (torch.rand(len(x), generator=g) < 0.5).to(device)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        x = degrade(x, cfg.noise_std, cfg.blur_sigma, g)
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
    stats = {
        "val_acc": val_acc,
        "n_val": n_val,
        "n_train": n_train,
        "train_seconds": seconds,
        "final_loss": float(loss.detach()),
        "chance_acc": 1.0 / data.num_classes,
    }
    log.info(
        "dataset classifier for %s: %d images, %d steps in %.1f s, held-out accuracy %.3f (chance %.3f)",
        data.name,
        n_train,
        cfg.steps,
        seconds,
        val_acc,
        1.0 / data.num_classes,
    )
    if val_acc < min(1.0, 2.0 / data.num_classes):
        log.warning("dataset classifier reached only %.3f held-out accuracy; its FID/IS are weak signals", val_acc)
    return net, stats
