"""Shared pieces of the published feature networks (DINOv2 for FD-DINOv2, CLIP ViT-L/14@336 for CMMD): finding a
local weights file, and the resizing and normalisation their reference implementations apply.

- Weights are never downloaded. ``find_weights`` looks at the option (a file), then ``$BENCHKIT_WEIGHTS_DIR/<file>``
  (a folder of release files under their official names), then the caches where the usual downloaders would have put
  the file (torch.hub's ``checkpoints`` folder, where torch-fidelity's and timm's downloads land).
- Resizing: both reference pipelines resize with PIL's bicubic filter (antialiased, output rounded to uint8): dgm-eval
  for FD-DINOv2 (``torchvision.transforms.Resize((224, 224), BICUBIC)`` on PIL images) and the CMMD reference code
  (``PIL.Image.resize((336, 336), BICUBIC)`` after a centre crop). ``resize_uint8(..., "pil")`` runs PIL itself;
  ``"torch"`` is torch's antialiased bicubic (the same a = -0.5 kernel as PIL), rounded to integers, which stays on
  the GPU; PIL rounds to 8 bits between its two passes, so the two differ by up to 2-3 grey levels on smooth images
  and up to ~25 at single pixels of pixel noise (mean 0.2-0.3 levels in both cases).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchkit.core.errors import ConfigError

WEIGHTS_DIR_ENV = "BENCHKIT_WEIGHTS_DIR"
RESIZE_MODES = ("pil", "torch")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def hub_checkpoints_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``, by default under ``~/.cache/torch``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(
    weights_file: str | None, file_names: Sequence[str], extra: Sequence[Path] = (), option: str = "weights_file"
) -> tuple[Path | None, str]:
    """(existing weights file or None, where it was looked for), in this order: the option ``weights_file`` (named
    ``option`` in the message: ``eval.dinov2_weights`` when it came from the run config); ``$BENCHKIT_WEIGHTS_DIR/
    <name>`` for each of ``file_names``; torch.hub's checkpoint cache under each name; the ``extra`` paths. A named
    option that is missing is not replaced by a cached file."""
    if weights_file:
        p = Path(weights_file).expanduser()
        return (p if p.is_file() else None), f"option {option}={weights_file}"
    candidates: list[Path] = []
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        candidates += [Path(env).expanduser() / n for n in file_names]
    candidates += [hub_checkpoints_dir() / n for n in file_names]
    candidates += list(extra)
    for c in candidates:
        if c.is_file():
            return c, str(c)
    return None, ", ".join(str(c) for c in candidates)


def missing_weights(network: str, file_name: str, where: str, option: str = "weights_file") -> ConfigError:
    """The one-line error for a weights file that is not on disk, naming the file and where to put it (``option``:
    the setting that names the file, e.g. ``eval.clip_weights``)."""
    point = "the features option weights_file" if option == "weights_file" else option
    return ConfigError(
        f"{network} weights not found (looked at {where}); benchkit never downloads. Put the release file {file_name} "
        f"at {hub_checkpoints_dir() / file_name} or in ${WEIGHTS_DIR_ENV}, or point {point} at it"
    )


def check_images(images: torch.Tensor) -> None:
    """Raise ValueError unless ``images`` is a uint8 tensor [N, 3, H, W]."""
    if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected uint8 images [N,3,H,W], got {got}")


def center_crop_square(images: torch.Tensor) -> torch.Tensor:
    """The central square of [N, C, H, W] images (side min(H, W); offsets rounded down, as the CMMD reference)."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top : top + side, left : left + side]


def _pil_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    from PIL import Image  # late: only the "pil" mode needs it

    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    hwc = images.permute(0, 2, 3, 1).cpu().numpy()
    for i, im in enumerate(hwc):
        out[i] = np.asarray(Image.fromarray(im).resize((size, size), resample=Image.Resampling.BICUBIC))
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(images.device)


def resize_uint8(images: torch.Tensor, size: int, mode: str = "pil") -> torch.Tensor:
    """uint8 [N, 3, H, W] -> uint8 [N, 3, size, size] with a bicubic, antialiased filter; unchanged at that size.

    ``mode="pil"``: PIL's BICUBIC per image on the CPU (what dgm-eval and the CMMD reference do). ``mode="torch"``:
    ``F.interpolate(mode="bicubic", antialias=True)``, rounded and clamped to 0..255, on the images' device.
    """
    check_images(images)
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if tuple(images.shape[-2:]) == (size, size):
        return images
    if mode == "pil":
        return _pil_resize(images, size)
    x = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 ((x / 255) - mean) / std per channel."""
    x = images.float().div(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file, a ``torch.save`` file (unwrapping ``state_dict`` / ``model`` and a
    ``module.`` prefix) or a TorchScript archive (its ``state_dict()``); ConfigError if unreadable."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # late: only for .safetensors files

            obj: object = load_file(str(path))
        elif _is_torchscript(path):  # OpenAI's CLIP release files are TorchScript archives
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ deprecates TorchScript
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            source = str(path)
            obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the same user error
        raise ConfigError(
            f"could not read weights {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); the file "
            "may be truncated or not a checkpoint: replace it"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConfigError(f"weights file {path} holds no state dict of tensors (got {type(obj).__name__})")
    sd = {str(k): v for k, v in obj.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _is_torchscript(path: Path) -> bool:
    import zipfile  # late: only to sniff the archive

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def mismatched_keys(expected: dict[str, torch.Size], got: dict[str, torch.Tensor]) -> str:
    """'' when ``got`` has exactly the names and shapes of ``expected``; else a short description of the difference."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(got[k].shape) != tuple(expected[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(got[k].shape)} vs {tuple(expected[k])})")
    return "; ".join(parts)


def assign_weights(module: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> nn.Module:
    """Fill ``module`` (built on the meta device) with ``state`` by assignment; a tensor ``state`` lacks is a
    ConfigError naming ``what`` and ``path``. Returns it in eval mode, without gradients."""
    module.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if leftover:
        raise ConfigError(f"{what}: tensors {leftover[:3]} were not in {path}")
    return module.eval().requires_grad_(False)
