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
- No adversarial (PatchGAN) loss, and LPIPS only when asked for (``tokenizer_train.lpips_weight``, 0 by default:
  its pretrained backbone is never downloaded, see ``benchkit.metrics.perceptual``). Reconstruction is L1 + L2 by
  default (the official recipe uses MSE + LPIPS + 0.75 x adaptive hinge GAN).
- The codebook has K rows, not K+1 (the official padding row is never selected; ``benchkit import rqvae`` drops it).
- With the default ``backbone = "benchkit"`` the encoder outputs the code dimension directly (no 1x1
  ``quant_conv`` / ``post_quant_conv``; ``backbone = "ldm"`` is the official layout with both) and the tiny code
  dimension is small (the official one is 256), which keeps the shared codebook fully used on tiny data.
- The commitment loss averages over depths (as the official code does; the paper writes a sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchkit.core.interfaces import LossOutput, TokenKind, TokenSpec
from benchkit.core.registry import TOKENIZERS
from benchkit.nn.codebook import soft_residual_codes
from benchkit.tokenizers.common import CodebookOptions, QuantizingTokenizer


@dataclass(frozen=True)
class RQConfig(CodebookOptions):
    """Options of the RQ-VAE tokenizer (and its codebook's and encoder/decoder's, ``CodebookOptions``); defaults =
    the ``tiny`` size (32x32 images -> 4x4x4 ids)."""

    depth: int = 4
    code_dim: int = 16
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")


@TOKENIZERS.register("rq", config=RQConfig)
class RQTokenizer(QuantizingTokenizer):
    """RQ-VAE tokenizer: D residual codes per position from one shared EMA codebook (Lee et al. 2022)."""

    name = "rq"
    cfg: RQConfig

    def build(self, grid: tuple[int, int]) -> dict[TokenKind, TokenSpec]:
        """The shared EMA codebook; token views: D ids and D (scaled) code vectors per position."""
        return self.build_codebook(grid, depth=self.cfg.depth)

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

    def soft_codes(
        self, latent: torch.Tensor, temperature: float, *, stochastic: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents [B, h, w, C] -> (ids [B, h, w, D], soft targets [B, h, w, D, K]): ``soft_residual_codes``."""
        return soft_residual_codes(
            latent, self.codebook.weight, self.cfg.depth, temperature, stochastic=stochastic, generator=generator
        )

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
        return self.quantized_loss(images, flat, partial, z.shape, torch.stack(ids), self.cfg.beta * commit, commit)

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
        self.check_kind(kind)
        ids = self._residual_ids(self._latent(images))
        return ids if kind == "discrete" else self.code_embeddings(ids) * self.scale

    def decode(self, tokens: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Tokens in the ``kind`` layout -> images float [B, 3, H, W] in [-1, 1]; sums the codes over depth."""
        self.check_kind(kind)
        codes = self.code_embeddings(tokens) if kind == "discrete" else tokens / self.scale  # [B, h, w, D, C]
        return self._decode_latent(codes.sum(dim=-2))
