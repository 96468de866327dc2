"""VQ-VAE tokenizer: a conv autoencoder whose latent grid is snapped to the nearest of K codes.

Method: VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937) with the EMA codebook and dead-code restart of RQ-VAE
(arXiv 2203.01941, kakaobrain/rq-vae-transformer @341395e) or the learned codebook + commitment loss of taming /
LlamaGen (arXiv 2012.09841, 2406.06525; FoundationVision/LlamaGen @ce98ec4), optionally with LlamaGen's
l2-normalised low-dimensional codes. Two token views: ids ("discrete", long [B, h, w]) and the quantized code
vectors ("continuous", float [B, h, w, C], times a calibrated scale so they have about unit variance), which is how
MAR trains Diffusion Loss on VQ latents (arXiv 2406.11838, Table 2).

Deviations:
- No adversarial (PatchGAN) loss (the tiny budget has no room for a discriminator), and a perceptual (LPIPS) term
  only when asked for (``tokenizer_train.lpips_weight``, 0 by default: its pretrained backbone is never downloaded,
  see ``benchkit.metrics.perceptual``). Reconstruction is L1 + L2 by default, so reconstructions are blurrier than
  a VQGAN's at the same rate.
- With the default ``backbone = "benchkit"`` the encoder outputs the code dimension directly (no separate 1x1
  ``quant_conv`` / ``post_quant_conv``); ``backbone = "ldm"`` is the taming layout with both.
- Continuous tokens are decoded as given (re-normalised when codes are l2-normalised); MAR's VQ-16 experiment
  snaps generated vectors to the nearest code first, which ``quantize_continuous=True`` reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from benchkit.core.interfaces import LossOutput, TokenKind, TokenSpec
from benchkit.core.registry import TOKENIZERS
from benchkit.tokenizers.common import CodebookOptions, QuantizingTokenizer


@dataclass(frozen=True)
class VQConfig(CodebookOptions):
    """Options of the VQ-VAE tokenizer (and its codebook's and encoder/decoder's, ``CodebookOptions``); defaults =
    the ``tiny`` size (32x32 images -> 8x8 ids)."""

    l2_normalize: bool = False
    codebook_update: Literal["ema", "learned"] = "ema"
    quantize_continuous: bool = False


@TOKENIZERS.register("vq", config=VQConfig)
class VQTokenizer(QuantizingTokenizer):
    """VQ-VAE tokenizer: conv encoder/decoder with an EMA (or learned) codebook (van den Oord et al. 2017)."""

    name = "vq"
    cfg: VQConfig

    def build(self, grid: tuple[int, int]) -> dict[TokenKind, TokenSpec]:
        """The codebook; token views: ids and (scaled) code vectors."""
        return self.build_codebook(grid, update=self.cfg.codebook_update, l2_normalize=self.cfg.l2_normalize)

    def _latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> encoder outputs in code space [B, h, w, C] (l2-normalised with the codebook)."""
        return self.codebook.normalize(super()._latent(images))

    def loss(self, images: torch.Tensor) -> LossOutput:
        """Training forward: L1 + L2 reconstruction + quantizer loss; updates the codebook in train mode."""
        z = self._latent(images)  # [B, h, w, C]
        flat = z.reshape(-1, z.shape[-1])  # [B*h*w, C]
        ids, codes = self.codebook.quantize(flat)
        q_loss, commit = self.codebook.loss(flat, codes)
        return self.quantized_loss(images, flat, codes, z.shape, ids, q_loss, commit)

    def encode(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Images [B, 3, H, W] -> ids long [B, h, w] or scaled code vectors float [B, h, w, C]; never updates codes."""
        self.check_kind(kind)
        z = self._latent(images)
        ids = self.codebook.nearest(z.reshape(-1, z.shape[-1])).reshape(z.shape[:-1])  # [B, h, w]
        return ids if kind == "discrete" else self.codebook.lookup(ids) * self.scale

    def decode(self, tokens: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Tokens in the ``kind`` layout -> images float [B, 3, H, W] in [-1, 1]."""
        self.check_kind(kind)
        if kind == "discrete":
            return self._decode_latent(self.codebook.lookup(tokens))
        z = self.codebook.normalize(tokens / self.scale)  # [B, h, w, C]
        if self.cfg.quantize_continuous:  # snap to the nearest code, as MAR decodes VQ-16 Diffusion-Loss samples
            z = self.codebook.lookup(self.codebook.nearest(z.reshape(-1, z.shape[-1])).reshape(z.shape[:-1]))
        return self._decode_latent(z)
