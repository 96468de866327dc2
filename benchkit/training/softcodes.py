"""Soft-target training of the RQ-Transformer: the token cache holds continuous latents, each batch is quantized anew.

With ``generator.options.soft_target_temperature > 0`` (the recipe of the official RQ-Transformer configs, Kim et
al. 2022: temperature 0.5, ``stochastic_codes = true``) the generator's targets are distributions over the codebook,
which the cached argmin ids cannot give. The pipeline then caches what the tokenizer's ``encode_latent`` returns
(the latents before quantization, [N, h, w, C]) under ``<tokenizer dir>/latent/`` through the ordinary token-cache
code (in memory or sharded), and every training batch is re-quantized by the tokenizer's ``soft_codes``
(``benchkit.nn.codebook.soft_residual_codes``): input codes (argmin or drawn from q_d) plus the soft targets q_d.
Stochastic draws use torch's global CPU generator, which the trainer seeds and checkpoints, so a resumed run sees
the draws an uninterrupted one would have seen. The default (hard targets) path never comes here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from benchkit.core.config import RunConfig
from benchkit.core.errors import IncompatibleComponentsError
from benchkit.core.interfaces import Batch, TokenKind
from benchkit.core.registry import GENERATORS
from benchkit.training.artifacts import TrainedTokenizer

__all__ = ["SoftCodes", "latent_cache_tokenizer", "soft_code_batch", "soft_codes_of"]


@dataclass(frozen=True)
class SoftCodes:
    """The soft-target settings of a run: temperature of q_d and whether input codes are drawn from it."""

    temperature: float
    stochastic: bool


def soft_codes_of(cfg: RunConfig, kind: TokenKind) -> SoftCodes | None:
    """The run's soft-target settings (None for hard targets, the default); checks head and token kind."""
    gen_cfg = GENERATORS.make_config(cfg.generator.name, cfg.generator.options)
    temperature = float(getattr(gen_cfg, "soft_target_temperature", 0.0) or 0.0)
    if temperature <= 0:
        return None
    if cfg.head.name != "ce" or kind != "discrete":
        raise IncompatibleComponentsError(
            f"generator.options.soft_target_temperature needs discrete tokens and head ce, got {kind} tokens and "
            f"head {cfg.head.name!r}"
        )
    return SoftCodes(temperature, bool(getattr(gen_cfg, "stochastic_codes", False)))


class _LatentView(nn.Module):
    """A tokenizer seen by the token cache as one whose cached 'tokens' are its latents before quantization."""

    def __init__(self, tokenizer: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def encode_for_cache(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor:
        del kind  # the latents do not depend on the token view
        return self.tokenizer.encode_latent(images)  # type: ignore[operator]


def latent_cache_tokenizer(tok: TrainedTokenizer) -> TrainedTokenizer:
    """A copy of a ``TrainedTokenizer`` whose token cache is the latent cache, kept apart under ``<dir>/latent``."""
    module = tok.module
    if not (hasattr(module, "encode_latent") and hasattr(module, "soft_codes")):
        raise IncompatibleComponentsError(
            f"soft targets need a residual-quantizing tokenizer (rq); {type(module).__name__} has no soft_codes"
        )
    latent_dir = tok.dir / "latent"
    latent_dir.mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(tok, module=_LatentView(module), dir=latent_dir, fingerprint=f"{tok.fingerprint}-latent")


@torch.no_grad()
def soft_code_batch(tokenizer: nn.Module, latents: torch.Tensor, labels: torch.Tensor, soft: SoftCodes) -> Batch:
    """Cached latents [B, h, w, C] -> a Batch of input ids [B, h, w, D] with soft targets [B, h, w, D, K]."""
    ids, targets = tokenizer.soft_codes(latents, soft.temperature, stochastic=soft.stochastic)  # type: ignore[operator]
    return Batch(ids, labels, targets)
