"""What the conv tokenizers (vq, rq, kl) share: their backbone options, the encoder/decoder around the latent grid,
the continuous-token scale and its calibration, the token-view check and the reconstruction loss.

:class:`ConvTokenizer` builds the backbone (benchkit's conv net, or the LDM layout with its 1x1 ``quant_conv`` /
``post_quant_conv``), lets the subclass build what sits on the latent grid (``build``: a codebook, or nothing) and
registers the ``scale`` buffer, 1/std of the unscaled continuous tokens of training images (DiT/MAR, no mean shift),
set by ``calibrate``. :class:`QuantizingTokenizer` adds what the codebook tokenizers (vq, rq) share: tokens that are
cached as they are, and the loss of a straight-through quantized latent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import LossOutput, TokenKind, TokenSpec
from benchkit.nn.codebook import Codebook, CodebookUpdate, check_codebook_options, code_usage, straight_through
from benchkit.nn.convnet import NORMS, downsample_factor
from benchkit.nn.ldm import check_backbone_options, tokenizer_backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvOptions:
    """Encoder/decoder options every conv tokenizer config carries (defaults = the ``tiny`` size)."""

    ch: int = 16
    channel_mult: tuple[int, ...] = (1, 1, 2)
    num_res_blocks: int = 1
    attention: bool = False
    norm: Literal["group", "none"] = "none"  # "none" at tiny: see benchkit/nn/convnet.py
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    backbone: Literal["benchkit", "ldm"] = "benchkit"  # "ldm": the official taming/LDM layout (benchkit/nn/ldm.py)
    attn_levels: tuple[int, ...] = ()  # ldm: levels (0 = full resolution) with attention in the encoder
    decoder_attn_levels: tuple[int, ...] = ()  # ldm: the same for the decoder

    def __post_init__(self) -> None:
        check_backbone_options(self)
        if self.ch < 1 or self.num_res_blocks < 1 or not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError("ch and num_res_blocks must be >= 1 and channel_mult a non-empty list of ints >= 1")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.l1_weight < 0 or self.l2_weight < 0:
            raise ValueError(f"l1_weight and l2_weight must be >= 0, got {self.l1_weight}, {self.l2_weight}")


@dataclass(frozen=True)
class CodebookOptions(ConvOptions):
    """Options of a tokenizer with a codebook (vq, rq), on top of the encoder/decoder's."""

    codebook_size: int = 256
    code_dim: int = 8
    decay: float = 0.99  # EMA codebook update
    beta: float = 0.25  # commitment weight
    restart_threshold: float = 1.0  # codes used less than this (EMA count) are restarted

    def __post_init__(self) -> None:
        super().__post_init__()
        check_codebook_options(self)


def latent_grid(image_size: int, channel_mult: tuple[int, ...], name: str) -> int:
    """Side of the token grid for ``image_size``; ConfigError if the image does not divide by the stride."""
    f = downsample_factor(channel_mult)
    if image_size < f or image_size % f:
        raise ConfigError(
            f"tokenizer {name!r}: image size {image_size} is not divisible by its downsampling factor {f} "
            f"(channel_mult={channel_mult}); use an image size that is a multiple of {f} or a shorter channel_mult"
        )
    return image_size // f


def reconstruction_loss(
    images: torch.Tensor, recon: torch.Tensor, l1_weight: float, l2_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """l1_weight * mean|x - x'| + l2_weight * mean (x - x')^2, with both terms logged."""
    l1 = F.l1_loss(recon, images)
    l2 = F.mse_loss(recon, images)
    return l1_weight * l1 + l2_weight * l2, {"l1": l1.item(), "mse": l2.item()}


class ConvTokenizer(nn.Module):
    """Base of the conv tokenizers: backbone, latent grid, ``scale`` and its calibration (see the module doc).

    A subclass names itself (``name``), gives the encoder's output and the decoder's input widths
    (``latent_channels``) and builds its quantizer and token views in ``build``.
    """

    scale: torch.Tensor

    name: ClassVar[str]
    cfg: Any
    specs: dict[TokenKind, TokenSpec]

    def __init__(self, cfg: Any, *, image_size: int = 32) -> None:
        super().__init__()
        self.cfg = cfg
        side = latent_grid(image_size, cfg.channel_mult, self.name)
        self.encoder, self.quant_conv, self.post_quant_conv, self.decoder = tokenizer_backbone(
            cfg, *self.latent_channels()
        )
        self.specs = self.build((side, side))
        self.register_buffer("scale", torch.tensor(1.0))  # continuous-token scale 1/std, set by calibrate()

    def latent_channels(self) -> tuple[int, int]:
        """(channels out of the encoder, channels into the decoder)."""
        raise NotImplementedError

    def build(self, grid: tuple[int, int]) -> dict[TokenKind, TokenSpec]:
        """Create the layers on the latent grid (after the backbone) and return the token views, native first."""
        raise NotImplementedError

    def check_kind(self, kind: str) -> None:
        """ConfigError unless ``kind`` is one of the tokenizer's token views."""
        if kind not in self.specs:
            raise ConfigError(f"tokenizer {self.name!r} has no {kind!r} tokens; valid: {', '.join(self.specs)}")

    def _latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> encoder outputs [B, h, w, C]."""
        return self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, h, w, C] (unscaled) -> decoder output [B, 3, H, W], not clamped."""
        return self.decoder(self.post_quant_conv(z.permute(0, 3, 1, 2)))

    def _decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, h, w, C] (unscaled) -> images [B, 3, H, W] in [-1, 1]."""
        return self.decode_raw(z).clamp(-1.0, 1.0)

    def calibration_tokens(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Unscaled continuous tokens of ``images`` for ``calibrate`` (the scale is 1 while it runs)."""
        return self.encode(images, "continuous")  # type: ignore[operator]  # a subclass's method

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Set ``scale`` to 1/std of the unscaled continuous tokens of ``images`` (in eval mode, in batches; seeded
        where tokens are sampled), so that generators see unit-variance continuous tokens."""
        self.scale.fill_(1.0)
        gen = torch.Generator(device=images.device).manual_seed(0)
        was_training = self.training
        self.eval()
        z = torch.cat(
            [self.calibration_tokens(images[i : i + batch_size], gen) for i in range(0, len(images), batch_size)]
        )
        self.scale.fill_(1.0 / z.float().std().clamp_min(1e-8).item())
        log.info("%s: continuous-token scale factor %.4f from %d images", self.name, self.scale.item(), len(images))
        self.train(was_training)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """decode(encode(images)) through the native (first) token view: [B, 3, H, W] -> [B, 3, H, W] in [-1, 1]."""
        kind = next(iter(self.specs))
        return self.decode(self.encode(images, kind), kind)  # type: ignore[operator]  # a subclass's method


class QuantizingTokenizer(ConvTokenizer):
    """A conv tokenizer with a codebook (vq, rq; config: :class:`CodebookOptions`): deterministic tokens, cached as
    they are, and the loss of a straight-through quantized latent."""

    def latent_channels(self) -> tuple[int, int]:
        """The encoder gives code vectors, the decoder takes (sums of) them."""
        return self.cfg.code_dim, self.cfg.code_dim

    def build_codebook(
        self, grid: tuple[int, int], *, depth: int = 1, update: CodebookUpdate = "ema", l2_normalize: bool = False
    ) -> dict[TokenKind, TokenSpec]:
        """Create ``self.codebook`` from the config; return the two token views: ``depth`` ids per position and
        their (scaled) code vectors."""
        cfg = self.cfg
        self.codebook = Codebook(
            cfg.codebook_size,
            cfg.code_dim,
            update=update,
            decay=cfg.decay,
            beta=cfg.beta,
            l2_normalize=l2_normalize,
            restart_threshold=cfg.restart_threshold,
        )
        return {
            "discrete": TokenSpec("discrete", grid, depth=depth, vocab_size=cfg.codebook_size),
            "continuous": TokenSpec("continuous", grid, depth=depth, dim=cfg.code_dim),
        }

    def encode_for_cache(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """What the token cache stores: the tokens themselves."""
        return self.encode(images, kind)  # type: ignore[operator]  # a subclass's method

    def tokens_from_cache(
        self, cached: torch.Tensor, kind: TokenKind, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Cached tokens back to training tokens: the identity (``generator`` is unused)."""
        self.check_kind(kind)
        return cached

    def quantized_loss(
        self,
        images: torch.Tensor,
        flat: torch.Tensor,
        quantized: torch.Tensor,
        shape: torch.Size,
        ids: torch.Tensor,
        q_loss: torch.Tensor,
        commit: torch.Tensor,
    ) -> LossOutput:
        """L1 + L2 reconstruction through ``quantized`` [N, C] with the gradient of the encoder output ``flat`` [N, C]
        (straight-through; ``shape`` = [B, h, w, C]) + the quantizer's ``q_loss``; logs codebook usage of ``ids``."""
        recon = self.decode_raw(straight_through(flat, quantized).reshape(shape))
        rec_loss, logs = reconstruction_loss(images, recon, self.cfg.l1_weight, self.cfg.l2_weight)
        usage, perplexity = code_usage(ids, self.cfg.codebook_size)
        loss = rec_loss + q_loss
        logs.update(recon=rec_loss.item(), commit=commit.item(), usage=usage, perplexity=perplexity, loss=loss.item())
        return LossOutput(loss, logs, recon)
