"""CMMD (Jayasumana et al., CVPR 2024, "Rethinking FID", arXiv 2401.09603): the squared maximum mean discrepancy
between CLIP ViT-L/14@336 image embeddings of two image sets, with a Gaussian RBF kernel, scaled by 1000.

- Network: OpenAI's CLIP ViT-L/14 at 336 px, the image tower only, built offline with open_clip (architecture
  ``ViT-L-14-336`` with QuickGELU, as OpenAI trained it). The embedding is the projected CLS token (``ln_post`` then
  ``proj``: what the reference's ``CLIPVisionModelWithProjection.image_embeds`` is), L2-normalised, 768-d.
- Weights: a local file, never downloaded: OpenAI's release ``ViT-L-14-336px.pt`` (a TorchScript archive; sha256
  ``3035c92b...`` as in its URL), a plain state dict in the same key layout (``visual.conv1.weight``,
  ``visual.class_embedding``, ``visual.positional_embedding``, ``visual.ln_pre``, ``visual.transformer.resblocks.<i>.
  {ln_1, attn.in_proj_weight/bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``visual.ln_post``, ``visual.proj``,
  plus the text tower, which is ignored), which is also open_clip's layout (``.pt``/``.bin``/``.safetensors``), or a
  file holding only the ``visual.*`` keys. Looked for at the option ``weights_file``, ``$BENCHKIT_WEIGHTS_DIR``,
  torch.hub's checkpoint cache under torch-fidelity's name (``clip-vit-l-14-336px-<sha256>.pt``) or OpenAI's, and
  ``~/.cache/clip/ViT-L-14-336px.pt`` (the ``clip`` package's download folder).
- Preprocessing (the reference's ``io_util`` + ``embedding``): centre crop to a square, resize to 336 x 336 with PIL's
  bicubic filter (antialiased, uint8 output), scale to [0, 1], normalise with CLIP's mean and std. The reference
  then resizes again with torch's bicubic to 336, a no-op at that size.
- Distance: the reference's ``mmd``: k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) with sigma = 10, and
  MMD^2 = mean K_xx + mean K_yy - 2 mean K_xy over ALL pairs, diagonals included: the biased (V-statistic) estimator,
  times 1000. benchkit computes it in blocks in float64 (the reference: one full matrix per term, float32).

Deviations: the JAX reference drops the images of an incomplete last batch (``drop_remainder``, batch 32); benchkit
uses every image.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchkit.core.errors import ConfigError
from benchkit.metrics.extractor import sha256_file
from benchkit.metrics.pretrained import (
    CLIP_MEAN,
    CLIP_STD,
    RESIZE_MODES,
    assign_weights,
    center_crop_square,
    check_images,
    find_weights,
    load_state_dict_file,
    mismatched_keys,
    missing_weights,
    normalise,
    resize_uint8,
)

OPENCLIP_ARCH = "ViT-L-14-336"
CLIP_FILE = "ViT-L-14-336px.pt"
CLIP_SHA256 = "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"
FIDELITY_CLIP_FILE = f"clip-vit-l-14-336px-{CLIP_SHA256}.pt"  # torch-fidelity's name in torch.hub's cache
INPUT_SIZE = 336
EMBED_DIM = 768
CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0


@dataclass(frozen=True)
class ClipConfig:
    """Options of the CLIP ViT-L/14@336 embedding network."""

    weights_file: str | None = None  # else $BENCHKIT_WEIGHTS_DIR, torch.hub's cache, ~/.cache/clip
    batch_size: int = 32
    resize: str = "pil"  # "pil" as the reference; "torch" stays on the device

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def find_clip_weights(cfg: ClipConfig, option: str = "weights_file") -> Path:
    """The CLIP ViT-L/14@336 weights file; ConfigError naming the file and where to put it when it is missing
    (``option``: the setting that names the file, for the message)."""
    path, where = find_weights(
        cfg.weights_file,
        [CLIP_FILE, FIDELITY_CLIP_FILE],
        extra=[Path.home() / ".cache" / "clip" / CLIP_FILE],
        option=option,
    )
    if path is None:
        raise missing_weights("CLIP ViT-L/14@336", CLIP_FILE, where, option)
    return path


def clip_tag(path: Path) -> str:
    """The table's name of these features: ``clip-vit-l-14-336`` for OpenAI's release file (its sha256), else
    ``clip-vit-l-14-336@<sha8>``."""
    digest = sha256_file(path)
    return "clip-vit-l-14-336" if digest == CLIP_SHA256 else f"clip-vit-l-14-336@{digest[:8]}"


def visual_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The image tower's tensors of an OpenAI / open_clip CLIP state dict, without the ``visual.`` prefix, as float32
    (OpenAI's file stores most of them in float16)."""
    return {k[len("visual.") :]: v.float() for k, v in sd.items() if k.startswith("visual.")}


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger; benchkit loads the
    weights right after, so that line would only mislead."""

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def build_clip_visual(path: Path) -> nn.Module:
    """open_clip's ViT-L/14@336 image tower (QuickGELU) with the weights of ``path``, in eval mode.

    Built on the meta device and filled by assignment (no random initialisation of 428M parameters); a file of
    another architecture is a ConfigError naming what differs.
    """
    import open_clip  # late: open_clip is an optional dependency, loaded only for CMMD

    sd = visual_state_dict(load_state_dict_file(path))
    with torch.device("meta"), _quiet_random_init_warning():
        model = open_clip.create_model(OPENCLIP_ARCH, pretrained=None, force_quick_gelu=True, device="meta")
    visual = model.visual
    expected = {k: v.shape for k, v in visual.state_dict().items()}
    diff = mismatched_keys(expected, sd)
    if diff:
        raise ConfigError(f"{path} is not a CLIP ViT-L/14@336 checkpoint in OpenAI's / open_clip's layout ({diff})")
    return assign_weights(visual, sd, "CLIP ViT-L/14@336", path)


class ClipNet(nn.Module):
    """uint8 images [N, 3, H, W] -> L2-normalised CLIP ViT-L/14@336 image embeddings float32 [N, 768]."""

    def __init__(self, visual: nn.Module, resize: str = "pil") -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.visual, self.resize = visual, resize

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> normalised float32 [N, 3, 336, 336] (centre crop, bicubic resize, CLIP mean/std)."""
        check_images(images)
        x = resize_uint8(center_crop_square(images).contiguous(), INPUT_SIZE, self.resize)
        return normalise(x, CLIP_MEAN, CLIP_STD)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Projected CLS embedding, divided by its L2 norm."""
        emb = self.visual(self.preprocess(images)).float()
        return F.normalize(emb, dim=-1)


def load_clip(cfg: ClipConfig, device: torch.device | str = "cpu") -> ClipNet:
    """The CLIP embedding network of ``cfg`` on ``device``; a missing weights file raises before anything is built."""
    path = find_clip_weights(cfg)
    return ClipNet(build_clip_visual(path), cfg.resize).to(device)


@torch.inference_mode()
def clip_embeddings(net: ClipNet, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """L2-normalised embeddings float32 [N, 768] on the CPU of uint8 images [N, 3, H, W], in batches."""
    check_images(images)
    device = next(net.parameters()).device
    out = [net(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, EMBED_DIM)


def _as_tensor(x: torch.Tensor | object, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    t = torch.as_tensor(x).to(device=device, dtype=dtype)
    if t.ndim != 2 or len(t) == 0:
        raise ValueError(f"embeddings must be a non-empty [N, D] array, got shape {tuple(t.shape)}")
    return t


def _kernel_mean(a: torch.Tensor, b: torch.Tensor, gamma: float, block: int) -> float:
    """mean over all (i, j) of exp(-gamma ||a_i - b_j||^2), with ||a||^2 + ||b||^2 - 2 a.b as the reference."""
    an, bn = (a * a).sum(1), (b * b).sum(1)
    total = torch.zeros((), dtype=a.dtype, device=a.device)
    for i in range(0, len(a), block):
        for j in range(0, len(b), block):
            d2 = an[i : i + block, None] + bn[None, j : j + block] - 2.0 * a[i : i + block] @ b[j : j + block].T
            total += torch.exp(-gamma * d2).sum()
    return float(total) / (len(a) * len(b))


def mmd2_rbf(
    x: torch.Tensor | object,
    y: torch.Tensor | object,
    *,
    sigma: float = CMMD_SIGMA,
    block: int = 4096,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> float:
    """Biased MMD^2 between embeddings x [N, D] and y [M, D] with the Gaussian kernel of bandwidth ``sigma``:
    mean K_xx + mean K_yy - 2 mean K_xy, diagonals included (the CMMD reference's estimator), in blocks of
    ``block`` x ``block`` kernel entries."""
    a, b = _as_tensor(x, dtype, device), _as_tensor(y, dtype, device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} and {b.shape[1]}")
    gamma = 1.0 / (2.0 * sigma**2)
    return _kernel_mean(a, a, gamma, block) + _kernel_mean(b, b, gamma, block) - 2.0 * _kernel_mean(a, b, gamma, block)


def cmmd(x: torch.Tensor | object, y: torch.Tensor | object, *, block: int = 4096) -> float:
    """CMMD as published: 1000 x biased MMD^2 with sigma = 10 between CLIP embeddings ``x`` (e.g. the reference set)
    and ``y`` (the samples); symmetric in the two."""
    return CMMD_SCALE * mmd2_rbf(x, y, sigma=CMMD_SIGMA, block=block)
