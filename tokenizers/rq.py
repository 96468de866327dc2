"""RQ-VAE tokenizer: residual quantization, D codes per position from one shared codebook.

Method: RQ-VAE, stage 1 of "Autoregressive Image Generation using Residual Quantization" (Lee et al., CVPR 2022,
arXiv 2203.01941; kakaobrain/rq-vae-transformer @341395e ``rqvae/models/rqvae/quantizations.py``). The encoder
output z at each grid position is approximated by a sum of D codes chosen greedily from one shared codebook:
r_0 = z, k_d = argmin_k ||r_{d-1} - e_k||^2, r_d = r_{d-1} - e_{k_d}, and the decoder receives the partial sum
z^(D) = sum_{d<=D} e_{k_d} through a straight-through estimator. The codebook is EMA-updated once per depth (D
sequential updates per forward, as in the official code) with restarts of unused codes.

Token views: "discrete" = ids long [B, h, w, D]; "continuous" = the per-depth code vectors float [B, h, w, D, C]
times a calibrated scale (one scalar, so the sum over D divided by the scale is the quantized latent).

Deviations:
- No perceptual (LPIPS) or adversarial (PatchGAN) loss: they need pretrained or extra networks that cannot be
  downloaded offline and do not fit the tiny budget. Reconstruction is L1 + L2 (the official recipe uses MSE +
  LPIPS + 0.75 x adaptive hinge GAN).
- The codebook has K rows, not K+1 (the official padding row is never selected; ``benchkit import rqvae`` drops it).
- With the default ``backbone = "benchkit"`` the encoder outputs the code dimension directly (no 1x1
  ``quant_conv`` / ``post_quant_conv``; ``backbone = "ldm"`` is the official layout with both) and the tiny code
  dimension is small (the official one is 256), which keeps the shared codebook fully used on tiny data.
- The commitment loss averages over depths (as the official code does; the paper writes a sum).
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
    soft_residual_codes,
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
class RQConfig:
    """Options of the RQ-VAE tokenizer; the defaults are the ``tiny`` size (32x32 images -> 4x4x4 ids)."""

    codebook_size: int = 256
    code_dim: int = 16
    depth: int = 4
    decay: float = 0.99
    beta: float = 0.25
    restart_threshold: float = 1.0
    ch: int = 16
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 1
    attention: bool = False
    norm: Literal["group", "none"] = "none"  # "none" at tiny: see benchkit/nn/convnet.py
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    backbone: Literal["benchkit", "ldm"] = "benchkit"  # "ldm": the official taming layout (benchkit/nn/ldm.py)
    attn_levels: tuple[int, ...] = ()  # ldm: levels (0 = full resolution) with attention in the encoder
    decoder_attn_levels: tuple[int, ...] = ()  # ldm: the same for the decoder

    def __post_init__(self) -> None:
        check_backbone_options(self)
        check_codebook_options(self)
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        check_conv_options(self)


@TOKENIZERS.register("rq", config=RQConfig)
class RQTokenizer(DeterministicTokenCache, nn.Module):
    """RQ-VAE tokenizer: D residual codes per position from one shared EMA codebook (Lee et al. 2022)."""

    name = "rq"

    def __init__(self, cfg: RQConfig, *, image_size: int = 32) -> None:
        super().__init__()
        self.cfg = cfg
        side = latent_grid(image_size, cfg.channel_mult, "rq")
        self.encoder, self.quant_conv, self.post_quant_conv, self.decoder = tokenizer_backbone(cfg, cfg.code_dim, cfg.code_dim)
        self.codebook = Codebook(
            cfg.codebook_size,
            cfg.code_dim,
            update="ema",
            decay=cfg.decay,
            beta=cfg.beta,
            restart_threshold=cfg.restart_threshold,
        )
        self.register_buffer("scale", torch.tensor(1.0))  # continuous-token scale 1/std, set by calibrate()
        self.specs: dict[TokenKind, TokenSpec] = {
            "discrete": TokenSpec("discrete", (side, side), depth=cfg.depth, vocab_size=cfg.codebook_size),
            "continuous": TokenSpec("continuous", (side, side), depth=cfg.depth, dim=cfg.code_dim),
        }

    def _latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> encoder outputs [B, h, w, C]."""
        return self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1)

    def _decode_latent(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantized latents [B, h, w, C] -> images [B, 3, H, W] in [-1, 1]."""
        return self.decode_raw(zq).clamp(-1.0, 1.0)

    def decode_raw(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantized latents [B, h, w, C] -> decoder output [B, 3, H, W], not clamped."""
        return self.decoder(self.post_quant_conv(zq.permute(0, 3, 1, 2)))

    def _residual_ids(self, z: torch.Tensor) -> torch.Tensor:
        """Greedy residual quantization without codebook updates: [B, h, w, C] -> ids long [B, h, w, D]."""
        residual = z.reshape(-1, z.shape[-1])  # r_0 = z, [N, C]
        ids = []
        for _ in range(self.cfg.depth):
            k = self.codebook.nearest(residual)  # k_d = argmin_k ||r_{d-1} - e_k||^2
            residual = residual - self.codebook.lookup(k)  # r_d = r_{d-1} - e_{k_d}
            ids.append(k)
        return torch.stack(ids, dim=-1).reshape(*z.shape[:-1], self.cfg.depth)

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> encoder latents [B, h, w, C] before quantization (the cache of soft-target training)."""
        return self._latent(images)

    def soft_codes(self, latent: torch.Tensor, temperature: float, *, stochastic: bool,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents [B, h, w, C] -> (ids [B, h, w, D], soft targets [B, h, w, D, K]): ``soft_residual_codes``."""
        return soft_residual_codes(latent, self.codebook.weight, self.cfg.depth, temperature, stochastic=stochastic,
                                   generator=generator)

    def loss(self, images: torch.Tensor) -> LossOutput:
        """Training forward: L1 + L2 reconstruction + beta x commitment; D EMA codebook updates in train mode."""
        z = self._latent(images)  # [B, h, w, C]
        flat = z.reshape(-1, z.shape[-1])  # [N, C]
        residual, partial = flat, torch.zeros_like(flat)
        commit = flat.new_zeros(())
        ids = []
        for _ in range(self.cfg.depth):
            # 1. k_d = argmin ||r_{d-1} - e_k||^2; in train mode the shared codebook is EMA-updated with the
            #    depth-d residuals before the next depth looks it up (official RQ-VAE behaviour).
            k, e = self.codebook.quantize(residual.detach())
            # 2. partial sum z^(d) = z^(d-1) + e_{k_d}; residual r_d = r_{d-1} - e_{k_d}.
            partial = partial + e
            residual = residual - e
            # 3. commitment term ||z - sg(z^(d))||^2, averaged over d below (paper eq. 6 sums over d).
            commit = commit + (flat - partial.detach()).pow(2).mean()
            ids.append(k)
        commit = commit / self.cfg.depth
        # 4. The decoder sees z^(D) with the gradient of z (straight-through).
        recon = self.decode_raw(straight_through(flat, partial).reshape(z.shape))
        rec_loss, logs = reconstruction_loss(images, recon, self.cfg.l1_weight, self.cfg.l2_weight)
        usage, perplexity = code_usage(torch.stack(ids), self.cfg.codebook_size)
        loss = rec_loss + self.cfg.beta * commit
        logs.update(recon=rec_loss.item(), commit=commit.item(), usage=usage, perplexity=perplexity, loss=loss.item())
        return LossOutput(loss, logs)

    def code_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Unscaled code vectors of a stack of ids: long [B, h, w, D] -> float [B, h, w, D, C]."""
        return self.codebook.lookup(ids)

    def partial_sums(self, ids: torch.Tensor) -> torch.Tensor:
        """Cumulative sums over depth of the (unscaled) code vectors: [B, h, w, D] -> [B, h, w, D, C]."""
        return self.code_embeddings(ids).cumsum(dim=-2)

    def decode_depth(self, ids: torch.Tensor, d: int) -> torch.Tensor:
        """Decode using only the first ``d`` codes of each stack: ids [B, h, w, D] -> images [B, 3, H, W]."""
        if not 1 <= d <= ids.shape[-1]:
            raise ValueError(f"d must be in [1, {ids.shape[-1]}], got {d}")
        return self._decode_latent(self.code_embeddings(ids[..., :d]).sum(dim=-2))

    def encode(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Images -> ids long [B, h, w, D] or scaled per-depth code vectors float [B, h, w, D, C]."""
        check_kind(kind, self.specs, "rq")
        ids = self._residual_ids(self._latent(images))
        return ids if kind == "discrete" else self.code_embeddings(ids) * self.scale

    def decode(self, tokens: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Tokens in the ``kind`` layout -> images float [B, 3, H, W] in [-1, 1]; sums the codes over depth."""
        check_kind(kind, self.specs, "rq")
        codes = self.code_embeddings(tokens) if kind == "discrete" else tokens / self.scale  # [B, h, w, D, C]
        return self._decode_latent(codes.sum(dim=-2))

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Set the continuous-token scale to 1/std of the per-depth code vectors of ``images`` (one scalar)."""
        self.scale.fill_(1.0)
        calibrate_scale(self, lambda b: self.encode(b, "continuous"), images, batch_size, "rq: continuous-token")

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode to D ids per position and decode back: images [B, 3, H, W] -> [B, 3, H, W] in [-1, 1]."""
        return self.decode(self.encode(images, "discrete"), "discrete")
