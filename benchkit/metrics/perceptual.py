"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", arXiv
1801.03924): an optional tokenizer reconstruction metric and training loss, built without any download.

The ``lpips`` package (``pip install 'benchkit[lpips]'``) ships the learned linear layers (v0.1); the backbone it
reads features from (AlexNet by default, or VGG-16) carries torchvision's ImageNet weights, which torchvision would
download. benchkit builds the backbone untrained and loads torchvision's own checkpoint file from a path you give
(``eval.lpips_weights``) or from torch's hub cache, where torchvision keeps it
(``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``). Without the package or the file, the metric is left
out of the tokenizer table (one log line says which file to put where) and a non-zero
``tokenizer_train.lpips_weight`` is refused with the same line.

Images are float in [-1, 1] (uint8 is rescaled); LPIPS is 0 for identical images and grows with the distortion.

Deviations: none in the computation (the package's own forward pass); only the loading of the backbone differs.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import LossOutput

# torchvision's checkpoint file of each backbone (the last part of its download URL, as torch.hub stores it)
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def backbone_path(net: str = "alex", path: str | None = None) -> Path:
    """The torchvision checkpoint LPIPS reads: ``path`` when given, else its place in torch's hub cache."""
    if net not in BACKBONE_FILES:
        raise ConfigError(f"unknown LPIPS backbone {net!r}; valid: {', '.join(BACKBONE_FILES)}")
    return Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / BACKBONE_FILES[net]


def lpips_unavailable(net: str = "alex", path: str | None = None) -> str | None:
    """One line saying why LPIPS cannot be built here (what to install, or which file to put where), or None."""
    if importlib.util.find_spec("lpips") is None:
        return "LPIPS needs the lpips package: pip install 'benchkit[lpips]'"
    file = backbone_path(net, path)
    if not file.is_file():
        return (
            f"LPIPS needs torchvision's ImageNet {net} weights and benchkit never downloads: put "
            f"{BACKBONE_FILES[net]} at {file}" + ("" if path else " (or set eval.lpips_weights to its path)")
        )
    return None


def load_lpips(net: str = "alex", path: str | None = None, device: torch.device | None = None) -> nn.Module:
    """The LPIPS network (eval mode, frozen) with the package's linear layers and the local backbone checkpoint;
    ConfigError with :func:`lpips_unavailable`'s line when it cannot be built."""
    reason = lpips_unavailable(net, path)
    if reason is not None:
        raise ConfigError(reason)
    import lpips

    with warnings.catch_warnings():  # the package asks torchvision for an untrained backbone in its older words
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    file = backbone_path(net, path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    # the package keeps torchvision's ``features.<i>`` layers as ``slice<k>.<i>``
    model.net.load_state_dict({name: state["features." + name.split(".", 1)[1]] for name in model.net.state_dict()})
    return model.eval().requires_grad_(False).to(device or torch.device("cpu"))


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images -> float [-1, 1]."""
    return images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()


def lpips_per_image(model: nn.Module, a: torch.Tensor, b: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """LPIPS distance of each image pair [B, 3, H, W] (uint8 or float in [-1, 1]) -> float [B], on the model's
    device, in batches."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(a), batch_size):
            x, y = (_as_float(t[i : i + batch_size]).to(device) for t in (a, b))
            out.append(model(x, y).flatten().cpu())
    return torch.cat(out)


def lpips_loss(weight: float, net: str = "alex", path: str | None = None) -> Callable[[Any, torch.Tensor], LossOutput]:
    """A tokenizer training loss ``(tokenizer, images) -> LossOutput``: the tokenizer's own loss plus ``weight`` x
    LPIPS(images, the reconstruction its loss decoded), logged as ``lpips``. With ``weight`` 0 it is the tokenizer's
    loss alone (nothing is loaded); a non-zero weight without the weights raises ConfigError naming the file and
    where to put it."""
    if weight < 0:
        raise ConfigError(f"lpips_weight must be >= 0 (0 = off), got {weight}")
    if weight == 0:
        return lambda tokenizer, images: tokenizer.loss(images)
    model = load_lpips(net, path)

    def loss(tokenizer: Any, images: torch.Tensor) -> LossOutput:
        out = tokenizer.loss(images)
        if out.recon is None:
            raise ConfigError(
                f"{type(tokenizer).__name__}.loss returns no reconstruction (LossOutput.recon), "
                "so it cannot be trained with an LPIPS loss; set tokenizer_train.lpips_weight = 0"
            )
        perceptual = model.to(images.device)(out.recon, images).mean()
        total = out.loss + weight * perceptual
        return LossOutput(total, {**out.logs, "lpips": perceptual.item(), "loss": total.item()}, out.recon)

    return loss
