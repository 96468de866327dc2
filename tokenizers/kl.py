"""KL-VAE tokenizer: a conv autoencoder with a diagonal Gaussian posterior, giving continuous tokens.

Method: the KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, arXiv 2112.10752; CompVis/
latent-diffusion ``ldm/models/autoencoder.py``) that MAR uses as its KL-16 tokenizer (Li et al. 2024, arXiv
2406.11838; LTH14/mar ``models/vae.py``). The encoder outputs mean and log-variance per latent channel (logvar
clamped to [-30, 20]); training decodes a posterior sample and adds kl_weight x KL(q(z|x) || N(0, I)). Tokens are
latents times a scale factor 1/std measured on training images (MAR's 0.2325 for KL-16, no mean shift, following
DiT). The token cache stores the posterior moments so every epoch sees a fresh sample, as MAR's ``main_cache.py``.

Deviations:
- No adversarial (PatchGAN) loss and no learned output log-variance (they do not fit the tiny budget), and LPIPS
  only when asked for (``tokenizer_train.lpips_weight``, 0 by default: its pretrained backbone is never downloaded,
  see ``benchkit.metrics.perceptual``). Reconstruction is L1 + L2 means;
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

from benchkit.core.interfaces import LossOutput, TokenKind, TokenSpec
from benchkit.core.registry import TOKENIZERS
from benchkit.tokenizers.common import ConvOptions, ConvTokenizer, reconstruction_loss


@dataclass(frozen=True)
class KLConfig(ConvOptions):
    """Options of the KL-VAE tokenizer (and the encoder/decoder's, ``ConvOptions``); defaults = the ``tiny`` size
    (32x32 images -> 8x8x4 latents). MAR's KL-16 has no decoder attention."""

    z_channels: int = 4
    kl_weight: float = 1e-6
    encode_mode: Literal["mode", "sample"] = "sample"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.z_channels < 1:
            raise ValueError(f"z_channels must be >= 1, got {self.z_channels}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")


@TOKENIZERS.register("kl", config=KLConfig)
class KLTokenizer(ConvTokenizer):
    """KL-VAE tokenizer: Gaussian-posterior conv autoencoder with scaled continuous latents (LDM / MAR KL-16)."""

    name = "kl"
    cfg: KLConfig

    def latent_channels(self) -> tuple[int, int]:
        """The encoder gives mean and log-variance, the decoder takes a latent."""
        return 2 * self.cfg.z_channels, self.cfg.z_channels

    def build(self, grid: tuple[int, int]) -> dict[TokenKind, TokenSpec]:
        """Nothing on the latent grid; one token view: the scaled latents."""
        return {"continuous": TokenSpec("continuous", grid, dim=self.cfg.z_channels)}

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z|x): images [B, 3, H, W] -> (mean, logvar), each float [B, h, w, C], logvar in [-30, 20]."""
        mean, logvar = self._latent(images).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)

    @staticmethod
    def _sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from ``generator`` (reparameterisation)."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * eps

    def _latent_token(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The unscaled latent a token is made of: the posterior mode or a sample, as ``encode_mode`` says."""
        return mean if self.cfg.encode_mode == "mode" else self._sample(mean, logvar, generator)

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
        return LossOutput(loss, logs, recon)

    def encode(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Images -> scaled latents float [B, h, w, C]: the posterior mode or a sample (``encode_mode``)."""
        self.check_kind(kind)
        return self._latent_token(*self.moments(images), None) * self.scale

    def decode(self, tokens: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """Scaled latents float [B, h, w, C] -> images float [B, 3, H, W] in [-1, 1]."""
        self.check_kind(kind)
        return self._decode_latent(tokens / self.scale)

    def encode_for_cache(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        """What the token cache stores: cat(mean, logvar) float [B, h, w, 2C], re-sampled by tokens_from_cache."""
        self.check_kind(kind)
        return torch.cat(self.moments(images), dim=-1)

    def tokens_from_cache(
        self, cached: torch.Tensor, kind: TokenKind, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Cached moments [B, h, w, 2C] -> scaled tokens [B, h, w, C]: a fresh posterior sample (or the mode)."""
        self.check_kind(kind)
        mean, logvar = cached.chunk(2, dim=-1)
        return self._latent_token(mean, logvar, generator) * self.scale

    def calibration_tokens(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The unscaled latents (as ``encode_mode`` gives them), sampled from ``generator`` for repeatability."""
        return self._latent_token(*self.moments(images), generator)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mode: images [B, 3, H, W] -> [B, 3, H, W] in [-1, 1]."""
        return self._decode_latent(self.moments(images)[0])
