"""FD-DINOv2 features: the CLS token of DINOv2 ViT-S/14, ViT-B/14 or ViT-L/14 (Oquab et al. 2023, arXiv 2304.07193),
built offline with timm from the official release's checkpoint, as dgm-eval computes them (Stein et al. 2023, arXiv
2306.04675: FD-DINOv2 is the Frechet distance on ViT-L/14 CLS features).

- Architectures: timm's ``vit_small_patch14_dinov2`` / ``vit_base_patch14_dinov2`` / ``vit_large_patch14_dinov2`` are
  the release's ``dinov2_vits14`` / ``vitb14`` / ``vitl14`` (patch 14, LayerScale, qkv bias, GELU MLP, LayerNorm eps
  1e-6, no registers); built with ``img_size=224`` and ``num_classes=0``, their output is the CLS token after the final
  norm, the hub model's output (``x_norm_clstoken``).
- Weights: a local file in the release's layout (``dinov2_vitl14_pretrain.pth``: ``cls_token``, ``pos_embed``
  [1, 1370, D] for a 37 x 37 grid at 518 px, ``mask_token``, ``patch_embed.proj``, ``blocks.<i>.{norm1, attn.qkv,
  attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``; chunked ``blocks.<c>.<i>.`` keys are
  flattened). The names equal timm's; ``mask_token`` is dropped. timm's own converted files (no ``mask_token``) load
  too. Looked for at the option ``weights_file``, ``$BENCHKIT_WEIGHTS_DIR/<file>`` and torch.hub's checkpoint cache
  (``~/.cache/torch/hub/checkpoints/dinov2_vitl14_pretrain.pth``): torch-fidelity 0.4.0 fetches DINOv2 through
  ``torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")``, whose weights land there (its extractor refuses a
  local ``feature_extractor_weights_path`` with NotImplementedError). A missing file is one ConfigError before any
  compute; benchkit never downloads.
- Position embeddings: at 224 px the release interpolates its 37 x 37 table to 16 x 16 in every forward (bicubic,
  no antialias, ``scale_factor = (16 + 0.1) / 37``: its ``interpolate_offset``). benchkit does the same interpolation
  once at load time, so its features equal the hub model's; timm's own loader resamples differently (antialiased,
  by size) and would not.
- Preprocessing (dgm-eval's ``DINOv2Encoder.transform``): resize to 224 x 224 with PIL's bicubic filter (antialiased,
  uint8 output; ``resize="torch"`` keeps it on the GPU with torch's antialiased bicubic: see
  ``benchkit.metrics.pretrained``), scale to [0, 1], normalise with the ImageNet mean and std.
- FD-DINOv2: ``benchkit.metrics.frechet.fid_from_features`` (the same Frechet distance as FID) on these features,
  or torch-fidelity's FID with ``fidelity_dinov2_class`` registered as the feature extractor.

Deviations: torch-fidelity's own ``dinov2-*`` extractors resize with TF1-style bilinear interpolation and no
antialiasing, not dgm-eval's bicubic; their FDs are not comparable to dgm-eval's or benchkit's.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchkit.core.errors import ConfigError
from benchkit.metrics.extractor import sha256_file
from benchkit.metrics.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_MODES,
    assign_weights,
    check_images,
    find_weights,
    load_state_dict_file,
    mismatched_keys,
    missing_weights,
    normalise,
    resize_uint8,
)

INPUT_SIZE = 224
PATCH = 14
INTERPOLATE_OFFSET = 0.1  # the release's ``interpolate_offset``


class DinoArch(NamedTuple):
    """One DINOv2 backbone: timm's model name, the release's file name, width, depth and heads."""

    timm_name: str
    file_name: str
    dim: int
    depth: int
    heads: int


DINOV2_ARCHS: dict[str, DinoArch] = {
    "dinov2-vit-s-14": DinoArch("vit_small_patch14_dinov2", "dinov2_vits14_pretrain.pth", 384, 12, 6),
    "dinov2-vit-b-14": DinoArch("vit_base_patch14_dinov2", "dinov2_vitb14_pretrain.pth", 768, 12, 12),
    "dinov2-vit-l-14": DinoArch("vit_large_patch14_dinov2", "dinov2_vitl14_pretrain.pth", 1024, 24, 16),
}


@dataclass(frozen=True)
class DinoV2Config:
    """Options of a DINOv2 feature network."""

    arch: str = "dinov2-vit-l-14"  # dgm-eval's default and the one FD-DINOv2 numbers are published for
    # else $BENCHKIT_WEIGHTS_DIR/<release file>, else torch.hub's checkpoint cache; not named weights_path, which
    # load_extractor fills with eval.inception_weights
    weights_file: str | None = None
    batch_size: int = 64
    resize: str = "pil"  # "pil" as dgm-eval; "torch" stays on the device

    def __post_init__(self) -> None:
        if self.arch not in DINOV2_ARCHS:
            raise ConfigError(f"unknown DINOv2 arch {self.arch!r}; valid: {', '.join(DINOV2_ARCHS)}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


def find_dinov2_weights(cfg: DinoV2Config, option: str = "weights_file") -> Path:
    """The weights file of ``cfg.arch``; ConfigError naming the file and where to put it when it is missing
    (``option``: the setting that names the file, for the message)."""
    arch = DINOV2_ARCHS[cfg.arch]
    path, where = find_weights(cfg.weights_file, [arch.file_name], option=option)
    if path is None:
        raise missing_weights(f"DINOv2 {cfg.arch}", arch.file_name, where, option)
    return path


def official_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """The release's position table [1, 1 + M*M, D] interpolated to a ``grid`` x ``grid`` patch grid the way its
    ``interpolate_pos_encoding`` does at run time: bicubic, no antialias, scale factor (grid + 0.1) / M."""
    n = pos_embed.shape[1] - 1
    m = int(round(n**0.5))
    if m * m != n:
        raise ConfigError(f"pos_embed holds {n} patch positions, not a square grid")
    if m == grid:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    dim = pos_embed.shape[-1]
    scale = (grid + INTERPOLATE_OFFSET) / m
    table = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, scale_factor=(scale, scale), mode="bicubic", antialias=False, align_corners=False)
    if tuple(table.shape[-2:]) != (grid, grid):
        raise ConfigError(f"interpolating a {m}x{m} position table gave {tuple(table.shape[-2:])}, not {grid}x{grid}")
    return torch.cat([cls_pos, table.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)


_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


def convert_dinov2_state_dict(sd: dict[str, torch.Tensor], grid: int = INPUT_SIZE // PATCH) -> dict[str, torch.Tensor]:
    """Release (or timm) DINOv2 keys -> timm ViT keys at a ``grid`` x ``grid`` patch grid, as float32.

    Drops ``mask_token``, flattens chunked ``blocks.<chunk>.<i>.`` names to ``blocks.<i>.``, and interpolates
    ``pos_embed`` as the release does at that grid. Registers (``register_tokens``) are refused: the reg4 models
    are other networks than the ones FD-DINOv2 is published for.
    """
    if "register_tokens" in sd:
        raise ConfigError("this is a DINOv2 checkpoint with registers (reg4); FD-DINOv2 uses the models without")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "mask_token":
            continue
        k = _CHUNKED.sub(r"blocks.\2.", k)
        out[k] = v.float()
    if "pos_embed" in out:
        out["pos_embed"] = official_pos_embed(out["pos_embed"], grid)
    return out


def _describe(sd: dict[str, torch.Tensor]) -> str:
    dim = sd["cls_token"].shape[-1] if "cls_token" in sd else "?"
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.norm1\.weight$", k))})
    return f"width {dim}, depth {depth}"


def _arch_of(sd: dict[str, torch.Tensor], path: Path) -> str:
    dim = sd["cls_token"].shape[-1] if "cls_token" in sd else None
    for name, spec in DINOV2_ARCHS.items():
        if spec.dim == dim:
            return name
    raise ConfigError(f"{path} is no DINOv2 ViT-S/B/L-14 checkpoint ({_describe(sd)})")


def build_dinov2(path: Path, arch: str | None = None) -> nn.Module:
    """timm's ViT for ``arch`` (None: read from the file's width) at 224 px with the weights of ``path`` (release or
    timm layout), in eval mode.

    The network is built on the meta device and the converted tensors are assigned to it, so no time goes into a
    random initialisation; a file of another architecture or layout is a ConfigError naming what differs.
    """
    import timm  # late: timm is an optional dependency, loaded only for these features

    sd = convert_dinov2_state_dict(load_state_dict_file(path))
    arch = arch or _arch_of(sd, path)
    spec = DINOV2_ARCHS[arch]
    with torch.device("meta"):
        vit = timm.create_model(spec.timm_name, pretrained=False, num_classes=0, img_size=INPUT_SIZE)
    expected = {k: v.shape for k, v in vit.state_dict().items()}
    diff = mismatched_keys(expected, sd)
    if diff:
        raise ConfigError(
            f"{path} is not a {arch} checkpoint in the DINOv2 release layout ({diff}; the file has {_describe(sd)}, "
            f"{arch} has width {spec.dim}, depth {spec.depth})"
        )
    return assign_weights(vit, sd, arch, path)


class DinoV2Net(nn.Module):
    """uint8 images [N, 3, H, W] -> DINOv2 CLS features float32 [N, D] (resize to 224, ImageNet normalisation)."""

    def __init__(self, vit: nn.Module, resize: str = "pil") -> None:
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.vit, self.resize = vit, resize

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> the normalised float32 [N, 3, 224, 224] input of the ViT."""
        check_images(images)
        return normalise(resize_uint8(images, INPUT_SIZE, self.resize), IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """CLS token after the final LayerNorm, float32 [N, D]."""
        return self.vit(self.preprocess(images)).float()


def load_dinov2(cfg: DinoV2Config, device: torch.device | str = "cpu") -> DinoV2Net:
    """The DINOv2 feature network of ``cfg`` on ``device``; a missing weights file raises before anything is built."""
    path = find_dinov2_weights(cfg)
    return DinoV2Net(build_dinov2(path, cfg.arch), cfg.resize).to(device)


@torch.inference_mode()
def dinov2_features(net: DinoV2Net, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """CLS features float32 [N, D] on the CPU of uint8 images [N, 3, H, W], ``batch_size`` images at a time."""
    check_images(images)
    device = next(net.parameters()).device
    out = [net(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, int(getattr(net.vit, "num_features", 0)))


# ---------------------------------------------------------------------------------------------- torch-fidelity side


@functools.cache
def fidelity_dinov2_class(resize: str = "pil") -> type:
    """The torch-fidelity ``FeatureExtractorBase`` subclass computing DINOv2 CLS features (feature name ``dinov2``)
    from ``feature_extractor_weights_path``; the architecture is read from the file. One class per resize mode
    (built lazily: torch-fidelity imports torchvision, which costs seconds)."""
    from torch_fidelity import FeatureExtractorBase  # late: torch-fidelity is slow to import

    class FidelityDinoV2(FeatureExtractorBase):
        """DINOv2 CLS features for torch-fidelity's FID, KID and PRC (no logits: no ISC)."""

        def __init__(
            self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: Any
        ) -> None:
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"feature extractor {name!r} needs feature_extractor_weights_path (never downloads)")
            path = Path(feature_extractor_weights_path)
            self.net = DinoV2Net(build_dinov2(path), resize)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("dinov2",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "dinov2"

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return (self.net(x),)

    FidelityDinoV2.__name__ = FidelityDinoV2.__qualname__ = f"FidelityDinoV2_{resize}"
    return FidelityDinoV2


def dinov2_extractor_spec(cfg: DinoV2Config) -> dict[str, Any]:
    """Keyword arguments of ``benchkit.metrics.extractor.Extractor`` (all but ``device``) for ``cfg``: tag
    ``<arch>@<sha8>`` (the file's sha256), torch-fidelity name ``benchkit-<arch>-<resize>-<sha16>``, feature layer
    ``dinov2`` and no logits layer. Raises the missing-file ConfigError first."""
    path = find_dinov2_weights(cfg)
    digest = sha256_file(path)
    return {
        "tag": f"{cfg.arch}@{digest[:8]}",
        "fidelity_name": f"benchkit-{cfg.arch}-{cfg.resize}-{digest[:16]}",
        "fidelity_class": fidelity_dinov2_class(cfg.resize),
        "weights_path": path,
        "feature_layer": "dinov2",
        "logits_layer": None,
        "num_classes": None,
        "batch_size": cfg.batch_size,
        "info": {"weights": str(path), "resize": cfg.resize, "input_size": INPUT_SIZE},
        "weights_hash": digest,
    }
