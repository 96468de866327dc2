"""VQ-VAE tokenizer: a conv autoencoder whose latent grid is snapped to the nearest of K codes.

Method: VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937) with the EMA codebook and dead-code restart of RQ-VAE
(arXiv 2203.01941, kakaobrain/rq-vae-transformer @341395e) or the learned codebook + commitment loss of taming /
LlamaGen (arXiv 2012.09841, 2406.06525; FoundationVision/LlamaGen @ce98ec4), optionally with LlamaGen's
l2-normalised low-dimensional codes. Two token views: ids ("discrete", long [B, h, w]) and the quantized code
vectors ("continuous", float [B, h, w, C], times a calibrated scale so they have about unit variance), which is how
MAR trains Diffusion Loss on VQ latents (arXiv 2406.11838, Table 2).

Deviations:
- No perceptual (LPIPS) or adversarial (PatchGAN) loss: both need pretrained or extra networks that cannot be
  downloaded offline, and the tiny budget has no room for a discriminator. Reconstruction is L1 + L2 instead, so
  reconstructions are blurrier than a VQGAN's at the same rate.
- With the default ``backbone = "benchkit"`` the encoder outputs the code dimension directly (no separate 1x1
  ``quant_conv`` / ``post_quant_conv``); ``backbone = "ldm"`` is the taming layout with both.
- Continuous tokens are decoded as given (re-normalised when codes are l2-normalised); MAR's VQ-16 experiment
  snaps generated vectors to the nearest code first, which ``quantize_continuous=True`` reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchkit.interfaces import LossOutput, TokenKind, TokenSpec
from benchkit.nn.codebook import (
    Codebook,
    check_codebook_options,
    code_usage,
    straight_through,
)
from benchkit.nn.convnet import (
    DeterministicTokenCache,
    calibrate_scale,
    check_conv_options,
    check_kind,
    latent_grid,
    reconstruction_loss,
)
from benchkit.nn.ldm import check_backbone_options, tokenizer_backbone
from benchkit.registry import TOKENIZERS


@dataclass(frozen=True)
class VQConfig:
    """Options of the VQ-VAE tokenizer; the defaults are the ``tiny`` size (32x32 images -> 8x8 ids)."""

    codebook_size: int = 256
    code_dim: int = 8
    l2_normalize: bool = False
    codebook_update: Literal["ema", "learned"] = "ema"
    decay: float = 0.99
    beta: float = 0.25
    restart_threshold: float = 1.0
    ch: int = 16
    channel_mult: tuple[int, ...] = (1, 1, 2)
    num_res_blocks: int = 1
    attention: bool = False
    norm: Literal["group", "none"] = "none"  # "none" at tiny: see benchkit/nn/convnet.py
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    quantize_continuous: bool = False
    backbone: Literal["benchkit", "ldm"] = "benchkit"  # "ldm": the official taming layout (benchkit/nn/ldm.py)
    attn_levels: tuple[int, ...] = ()  # ldm: levels (0 = full resolution) with attention in the encoder
    decoder_attn_levels: tuple[int, ...] = ()  # ldm: the same for the decoder

    def __post_init__(self) -> None:
        check_backbone_options(self)
        check_codebook_options(self)
        check_conv_options(self)


@TOKENIZERS.register("vq", config=VQConfig)
class VQTokenizer(DeterministicTokenCache, nn.Module):
    """VQ-VAE tokenizer: conv encoder/decoder with an EMA (or learned) codebook (van den Oord et al. 2017)."""

    name = "vq"

    def __init__(self, cfg: VQConfig, *, image_size: int = 32) -> None:
        super().__init__()
        self.cfg = cfg
        side = latent_grid(image_size, cfg.channel_mult, "vq")
        self.encoder, self.quant_conv, self.post_quant_conv, self.decoder = tokenizer_backbone(cfg, cfg.code_dim, cfg.code_dim)
        self.codebook = Codebook(
            cfg.codebook_size,
            cfg.code_dim,
            update=cfg.codebook_update,
            decay=cfg.decay,
            beta=cfg.beta,
            l2_normalize=cfg.l2_normalize,
            restart_threshold=cfg.restart_threshold,
        )
        self.register_buffer("scale", torch.tensor(1.0))  # continuous-token scale 1/std, set by calibrate()
        self.specs: dict[TokenKind, TokenSpec] = {
            "discrete": TokenSpec("discrete", (side, side), vocab_size=cfg.codebook_size),
            "continuous": TokenSpec("continuous", (side, side), dim=cfg.code_dim),
        }

    def _latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> encoder outputs in code space [B, h, w, C]."""
        return self.codebook.normalize(self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1))

    def _decode_latent(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantized latents [B, h, w, C] -> images [B, 3, H, W] in [-1, 1]."""
        return self.decode_raw(zq).clamp(-1.0, 1.0)

    def decode_raw(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantized latents [B, h, w, C] -> decoder output [B, 3, H, W], not clamped."""
        return self.decoder(self.post_quant_conv(zq.permute(0, 3, 1, 2)))

    def loss(self, images: torch.Tensor) -> LossOutput:
        """Training forward: L1 + L2 reconstruction + quantizer loss; updates the codebook in train mode."""
        z = self._latent(images)  # [B, h, w, C]
        flat = z.reshape(-1, z.shape[-1])  # [B*h*w, C]
        ids, codes = self.codebook.quantize(flat)
        q_loss, commit = self.codebook.loss(flat, codes)
        recon = self.decode_raw(straight_through(flat, codes).reshape(z.shape))
        rec_loss, logs = reconstruction_loss(images, recon, self.cfg.l1_weight, self.cfg.l2_weight)
        usage, perplexity = code_usage(ids, self.cfg.codebook_size)
        loss = rec_loss + q_loss
        logs.update(recon=rec_loss.item(), commit=commit.item(), usage=usage, perplexity=perplexity, loss=loss.item())
        return LossOutput(loss, logs)

    def encode(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Images [B, 3, H, W] -> ids long [B, h, w] or scaled code vectors float [B, h, w, C]; never updates codes."""
        check_kind(kind, self.specs, "vq")
        z = self._latent(images)
        ids = self.codebook.nearest(z.reshape(-1, z.shape[-1])).reshape(z.shape[:-1])  # [B, h, w]
        return ids if kind == "discrete" else self.codebook.lookup(ids) * self.scale

    def decode(self, tokens: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Tokens in the ``kind`` layout -> images float [B, 3, H, W] in [-1, 1]."""
        check_kind(kind, self.specs, "vq")
        if kind == "discrete":
            return self._decode_latent(self.codebook.lookup(tokens))
        z = self.codebook.normalize(tokens / self.scale)  # [B, h, w, C]
        if self.cfg.quantize_continuous:  # snap to the nearest code, as MAR decodes VQ-16 Diffusion-Loss samples
            z = self.codebook.lookup(self.codebook.nearest(z.reshape(-1, z.shape[-1])).reshape(z.shape[:-1]))
        return self._decode_latent(z)

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Set the continuous-token scale to 1/std of the code vectors of ``images`` (DiT/MAR, no mean shift)."""
        self.scale.fill_(1.0)
        calibrate_scale(self, lambda b: self.encode(b, "continuous"), images, batch_size, "vq: continuous-token")

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode to ids and decode back: images [B, 3, H, W] -> [B, 3, H, W] in [-1, 1]."""
        return self.decode(self.encode(images, "discrete"), "discrete")
