"""KL-VAE tokenizer: a conv autoencoder with a diagonal Gaussian posterior, giving continuous tokens.

Method: the KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, arXiv 2112.10752; CompVis/
latent-diffusion ``ldm/models/autoencoder.py``) that MAR uses as its KL-16 tokenizer (Li et al. 2024, arXiv
2406.11838; LTH14/mar ``models/vae.py``). The encoder outputs mean and log-variance per latent channel (logvar
clamped to [-30, 20]); training decodes a posterior sample and adds kl_weight x KL(q(z|x) || N(0, I)). Tokens are
latents times a scale factor 1/std measured on training images (MAR's 0.2325 for KL-16, no mean shift, following
DiT). The token cache stores the posterior moments so every epoch sees a fresh sample, as MAR's ``main_cache.py``.

Deviations:
- No perceptual (LPIPS) or adversarial (PatchGAN) loss, and no learned output log-variance: they need pretrained or
  extra networks that cannot be downloaded offline and do not fit the tiny budget. Reconstruction is L1 + L2 means;
  the KL sum per image is divided by the number of image values 3*H*W, so ``kl_weight`` keeps LDM's meaning
  (LDM sums its reconstruction over pixels and its KL over latent values).
- With the default ``backbone = "benchkit"`` the encoder outputs the 2*C moments directly (no 1x1 ``quant_conv``
  / ``post_quant_conv``); ``backbone = "ldm"`` is the official layout, 1x1 convs included, so that MAR's released
  KL-16 loads (``benchkit import kl16``).
- ``reconstruct`` decodes the posterior mode, so reconstruction metrics are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchkit.interfaces import LossOutput, TokenKind, TokenSpec
from benchkit.nn.convnet import (
    calibrate_scale,
    check_conv_options,
    check_kind,
    latent_grid,
    reconstruction_loss,
)
from benchkit.nn.ldm import check_backbone_options, tokenizer_backbone
from benchkit.registry import TOKENIZERS


@dataclass(frozen=True)
class KLConfig:
    """Options of the KL-VAE tokenizer; the defaults are the ``tiny`` size (32x32 images -> 8x8x4 latents)."""

    z_channels: int = 4
    kl_weight: float = 1e-6
    encode_mode: Literal["mode", "sample"] = "sample"
    ch: int = 16
    channel_mult: tuple[int, ...] = (1, 1, 2)
    num_res_blocks: int = 1
    attention: bool = False
    norm: Literal["group", "none"] = "none"  # "none" at tiny: see benchkit/nn/convnet.py
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    backbone: Literal["benchkit", "ldm"] = "benchkit"  # "ldm": the official layout (benchkit/nn/ldm.py)
    attn_levels: tuple[int, ...] = ()  # ldm: levels (0 = full resolution) with attention in the encoder
    decoder_attn_levels: tuple[int, ...] = ()  # ldm: the same for the decoder (MAR's KL-16 has none)

    def __post_init__(self) -> None:
        check_backbone_options(self)
        if self.z_channels < 1:
            raise ValueError(f"z_channels must be >= 1, got {self.z_channels}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        check_conv_options(self)


@TOKENIZERS.register("kl", config=KLConfig)
class KLTokenizer(nn.Module):
    """KL-VAE tokenizer: Gaussian-posterior conv autoencoder with scaled continuous latents (LDM / MAR KL-16)."""

    def __init__(self, cfg: KLConfig, *, image_size: int = 32) -> None:
        super().__init__()
        self.cfg = cfg
        side = latent_grid(image_size, cfg.channel_mult, "kl")
        self.encoder, self.quant_conv, self.post_quant_conv, self.decoder = tokenizer_backbone(cfg, 2 * cfg.z_channels, cfg.z_channels)  # encoder: mean and logvar
        self.register_buffer("scale", torch.tensor(1.0))  # token scale 1/std, set by calibrate()
        self.specs: dict[TokenKind, TokenSpec] = {
            "continuous": TokenSpec("continuous", (side, side), dim=cfg.z_channels)
        }

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x): images [B, 3, H, W] -> (mean, logvar), each float [B, h, w, C], logvar in [-30, 20]."""
        mean, logvar = self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def _sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from ``generator`` (reparameterisation)."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * eps

    def _decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, h, w, C] (unscaled) -> images [B, 3, H, W] in [-1, 1]."""
        return self.decode_raw(z).clamp(-1.0, 1.0)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, h, w, C] (unscaled) -> decoder output [B, 3, H, W], not clamped."""
        return self.decoder(self.post_quant_conv(z.permute(0, 3, 1, 2)))

    def loss(self, images: torch.Tensor) -> LossOutput:
        """Training forward: L1 + L2 reconstruction of a posterior sample + kl_weight x KL / (3*H*W)."""
        # 1. Posterior moments and a reparameterised sample z ~ q(z|x).
        mean, logvar = self.moments(images)
        z = self._sample(mean, logvar, None)
        # 2. Reconstruct from the sample.
        recon = self.decode_raw(z)
        rec_loss, logs = reconstruction_loss(images, recon, self.cfg.l1_weight, self.cfg.l2_weight)
        # 3. KL(N(mean, var) || N(0, I)) = 0.5 sum(mean^2 + var - 1 - logvar), summed per image, batch mean.
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
        loss = rec_loss + self.cfg.kl_weight * kl / images[0].numel()
        logs.update(recon=rec_loss.item(), kl=kl.item(), logvar=logvar.mean().item(), loss=loss.item())
        return LossOutput(loss, logs)

    def encode(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Images -> scaled latents float [B, h, w, C]: the posterior mode or a sample (``encode_mode``)."""
        check_kind(kind, self.specs, "kl")
        mean, logvar = self.moments(images)
        z = mean if self.cfg.encode_mode == "mode" else self._sample(mean, logvar, None)
        return z * self.scale

    def decode(self, tokens: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Scaled latents float [B, h, w, C] -> images float [B, 3, H, W] in [-1, 1]."""
        check_kind(kind, self.specs, "kl")
        return self._decode_latent(tokens / self.scale)

    def encode_for_cache(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """What the token cache stores: cat(mean, logvar) float [B, h, w, 2C], re-sampled by tokens_from_cache."""
        check_kind(kind, self.specs, "kl")
        return torch.cat(self.moments(images), dim=-1)

    def tokens_from_cache(
        self, cached: torch.Tensor, kind: TokenKind, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Cached moments [B, h, w, 2C] -> scaled tokens [B, h, w, C]: a fresh posterior sample (or the mode)."""
        check_kind(kind, self.specs, "kl")
        mean, logvar = cached.chunk(2, dim=-1)
        z = mean if self.cfg.encode_mode == "mode" else self._sample(mean, logvar, generator)
        return z * self.scale

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Set scale = 1/std of the latents (as ``encode_mode`` gives them) of ``images``; seeded for repeatability."""
        gen = torch.Generator(device=images.device).manual_seed(0)

        def latents(batch: torch.Tensor) -> torch.Tensor:
            mean, logvar = self.moments(batch)
            return mean if self.cfg.encode_mode == "mode" else self._sample(mean, logvar, gen)

        calibrate_scale(self, latents, images, batch_size, "kl: latent")

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mode: images [B, 3, H, W] -> [B, 3, H, W] in [-1, 1]."""
        return self._decode_latent(self.moments(images)[0])
