"""Raster-order autoregressive generator: a GPT-style causal transformer with a class-token prefix.

The "AR" rows of MAR's Table 1 (Li et al., arXiv 2406.11838, Sec. 4.2): one decoder-only transformer with a
causal mask, teacher forcing in training and a KV cache at inference, with a per-token head on top (cross-
entropy or Diffusion Loss). Class conditioning and CFG follow LlamaGen (Sun et al., arXiv 2406.06525): the
class (or null class) embedding is a prefix token, labels are dropped to the null class with probability
``label_drop`` in training, and at sampling the batch is doubled [conditional; unconditional] and the head
mixes the two (LlamaGen mixes logits; the Diffusion Loss head mixes predicted noise).

Stacked tokens (RQ codes, depth D) are flattened to an h*w*D sequence (position-major, then depth): the
long-sequence baseline against the RQ-Transformer.

Deviations:
- LayerNorm/GELU blocks with learned absolute positions (LlamaGen uses RMSNorm, SwiGLU and 2-D RoPE).
- Guidance may ramp linearly with the fraction of generated tokens (``cfg_schedule="linear"``, as MAR);
  LlamaGen uses a constant scale.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchkit.errors import ConfigError
from benchkit.interfaces import Batch, LossOutput, Progress, TokenSpec
from benchkit.nn.conditioning import (
    check_transformer_options,
    drop_labels,
    guidance_labels,
    token_embedding,
)
from benchkit.nn.transformer import Transformer, init_weights
from benchkit.registry import GENERATORS, HEADS
from benchkit.schedules import cfg_at, check_sampling_args

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ARConfig:
    """Options of the raster-order AR generator (defaults = ``tiny``)."""

    width: int = 96
    depth: int = 4  # transformer blocks: MAR's encoder + decoder depth, so backbones match (MAR Sec. 4.2)
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    label_drop: float = 0.1
    use_kv_cache: bool = True

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1 or self.num_heads < 1:
            raise ValueError(f"width, depth, num_heads must be >= 1, got {self.width}, {self.depth}, {self.num_heads}")
        check_transformer_options(self)


@GENERATORS.register("ar", config=ARConfig)
class ARGenerator(nn.Module):
    """Raster-order AR: GPT-style causal transformer with a class-token prefix and a KV cache (MAR Table 1 "AR")."""

    def __init__(
        self,
        cfg: ARConfig,
        *,
        spec: TokenSpec,
        head: str,
        head_options: dict[str, Any] | None = None,
        num_classes: int,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg, self.spec, self.num_classes = cfg, spec, num_classes
        self.use_kv_cache = cfg.use_kv_cache
        self.seq_len = spec.positions * spec.depth  # L: h*w*D tokens in raster-then-depth order
        W = cfg.width
        self.tok_emb = token_embedding(spec, W)
        self.class_emb = nn.Embedding(num_classes + 1, W)  # row num_classes = null class (CFG)
        self.pos_emb = nn.Parameter(torch.zeros(1, self.seq_len, W))  # slot 0 = class token, slot t = token t-1
        self.transformer = Transformer(W, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.apply(init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        # built last so our init leaves the head's own init alone
        self.head = HEADS.create(head, spec=dataclasses.replace(spec, depth=1), cond_dim=W, **(head_options or {}))

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> str | None:
        """Any token layout works: stacked tokens are flattened to one h*w*D sequence."""
        return None

    def _flat(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens in spec layout -> [B, L] (discrete) or [B, L, C] (continuous)."""
        B = tokens.shape[0]
        return tokens.reshape(B, self.seq_len) if self.spec.kind == "discrete" else tokens.reshape(B, self.seq_len, -1)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens [B, L(, C)], labels [B] -> condition vectors [B, L, W] predicting token t at t."""
        x = torch.cat([self.class_emb(labels)[:, None], self.tok_emb(tokens[:, :-1])], dim=1)  # [B, L, W]
        return self.transformer(x + self.pos_emb, causal=True)

    def loss(self, batch: Batch) -> LossOutput:
        """Head loss averaged over every token of the sequence, with labels dropped to the null class."""
        tokens, labels = self._flat(batch.tokens), batch.labels
        if self.training:
            labels = drop_labels(labels, self.cfg.label_drop, self.num_classes)
        z = self.forward(tokens, labels)  # [B, L, W]
        target = tokens.reshape(-1) if self.spec.kind == "discrete" else tokens.reshape(-1, tokens.shape[-1])
        loss = self.head.loss(z.reshape(-1, z.shape[-1]), target, None)
        return LossOutput(loss, {"loss": float(loss.detach())})

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        *,
        steps: int | None = None,
        cfg: float = 1.0,
        cfg_schedule: str = "constant",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        diffusion_steps: int | None = None,
    ) -> torch.Tensor:
        """Sample one token at a time in raster order; returns tokens in the spec layout.

        ``steps`` must be None or the sequence length h*w*D. With ``use_kv_cache`` each step feeds only the new
        token; without it the whole prefix is recomputed (the reference path; same tokens for the same seed).
        """
        check_sampling_args(
            labels, self.num_classes, steps=steps, cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature,
            diffusion_steps=diffusion_steps,
        )
        labels = labels.to(self.class_emb.weight.device)
        L = self.seq_len
        if steps is not None and steps != L:
            raise ConfigError(f"ar generates one token per step: steps must be None or {L} (h*w*depth), got {steps}")
        B = labels.shape[0]
        guided = cfg != 1.0
        cond_labels = guidance_labels(labels, self.num_classes, guided)
        x = self.class_emb(cond_labels)[:, None] + self.pos_emb[:, :1]  # [B', 1, W] slot 0
        cache = self.transformer.new_cache(x.shape[0], L, x) if self.use_kv_cache else None
        prefix = x  # uncached path: every input slot so far, [B', t+1, W]
        out: list[torch.Tensor] = []
        for t in range(L):
            # 1. condition for token t: the transformer output at slot t (slot 0 holds the class token)
            if cache is not None:
                z = self.transformer(x, causal=True, cache=cache)[:, -1]  # [B', W]
            else:
                z = self.transformer(prefix, causal=True)[:, -1]
            # 2. guidance scale after this token (Muse/MAR linear ramp over the fraction generated)
            w = cfg_at(cfg, cfg_schedule, (t + 1) / L)
            if guided and w == 1.0:
                z = z[:B]
            tok = self.head.sample(z, temperature=temperature, cfg=w, generator=generator,
                                   diffusion_steps=diffusion_steps)
            out.append(tok)
            if progress is not None:
                progress(t + 1, L)
            if t + 1 < L:
                # 3. feed the sampled token to both halves (LlamaGen) at slot t+1
                tok_in = torch.cat([tok, tok]) if guided else tok
                x = self.tok_emb(tok_in)[:, None] + self.pos_emb[:, t + 1 : t + 2]
                if cache is None:
                    prefix = torch.cat([prefix, x], dim=1)
        tokens = torch.stack(out, dim=1)  # [B, L(, C)]
        return tokens.reshape(B, *self.spec.token_shape).to(self.spec.dtype)
