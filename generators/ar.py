"""Raster-order autoregressive generator: a GPT-style causal transformer with a class-token prefix.

The "AR" rows of MAR's Table 1 (Li et al., arXiv 2406.11838, Sec. 4.2): one decoder-only transformer with a
causal mask, teacher forcing in training and a KV cache at inference, with a per-token head on top (cross-
entropy or Diffusion Loss). Class conditioning and CFG follow LlamaGen (Sun et al., arXiv 2406.06525): the
class (or null class) embedding is a prefix token (``class_tokens > 1`` repeats it in that many slots, as MAR's
class-embedding buffer in front of its sequences), labels are dropped to the null class with probability
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

from dataclasses import dataclass, field

import torch
from torch import nn

from benchkit.core.identity import UNLESS_DEFAULT
from benchkit.core.interfaces import Batch, LossOutput, Progress, TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.generators.common import (
    ClassConditionalGenerator,
    GeneratorOptions,
    GuidedSampler,
    check_fixed_steps,
)
from benchkit.nn.conditioning import token_embedding
from benchkit.nn.transformer import IncrementalDecoder, Transformer, init_weights


@dataclass(frozen=True)
class ARConfig(GeneratorOptions):
    """Options of the raster-order AR generator (defaults = ``tiny``)."""

    depth: int = 4  # transformer blocks: MAR's encoder + decoder depth, so backbones match (MAR Sec. 4.2)
    use_kv_cache: bool = True
    # slots holding the class embedding in front of the tokens (LlamaGen: 1; MAR's buffer: 64); in a run's
    # fingerprint only when not 1, so runs trained before this option keep their names
    class_tokens: int = field(default=1, metadata=UNLESS_DEFAULT)

    def counts(self) -> dict[str, int]:
        """Blocks and class slots (>= 1)."""
        return {"depth": self.depth, "class_tokens": self.class_tokens}


@GENERATORS.register("ar", config=ARConfig)
class ARGenerator(ClassConditionalGenerator):
    """Raster-order AR: GPT-style causal transformer with a class-token prefix and a KV cache (MAR Table 1 "AR")."""

    cfg: ARConfig
    locality_order = "ar"  # benchkit.metrics.locality: visible tokens are those before a position

    def build(self) -> None:
        """Token and class embeddings, one learned position per slot, the causal transformer."""
        cfg, spec = self.cfg, self.spec
        self.use_kv_cache = cfg.use_kv_cache
        self.seq_len = spec.positions * spec.depth  # L: h*w*D tokens in raster-then-depth order
        self.num_slots = self.seq_len + cfg.class_tokens - 1  # the last token is never an input
        W = cfg.width
        self.tok_emb = token_embedding(spec, W)
        self.class_emb = self.class_embedding()
        # slots 0 .. P-1 = class tokens, slot P-1+t = token t-1 (P = class_tokens)
        self.pos_emb = nn.Parameter(torch.zeros(1, self.num_slots, W))
        self.transformer = Transformer(W, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.apply(init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> str | None:
        """Any token layout works: stacked tokens are flattened to one h*w*D sequence."""
        return None

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tokens [B, L(, C)], labels [B] -> condition vectors [B, L, W] predicting token t at t."""
        x = torch.cat([self.class_slots(labels), self.tok_emb(tokens[:, :-1])], dim=1)  # [B, P-1+L, W]
        return self.transformer(x + self.pos_emb, causal=True)[:, self.cfg.class_tokens - 1 :]

    def class_slots(self, labels: torch.Tensor) -> torch.Tensor:
        """The class embedding in each of the ``class_tokens`` first slots: [B, P, W]."""
        return self.class_emb(labels)[:, None].expand(-1, self.cfg.class_tokens, -1)

    def loss(self, batch: Batch) -> LossOutput:
        """Head loss averaged over every token of the sequence, with labels dropped to the null class."""
        tokens, labels = self.as_sequence(batch.tokens, self.seq_len), self.training_labels(batch.labels)
        z = self.forward(tokens, labels)  # [B, L, W]
        target = tokens.reshape(-1) if self.spec.kind == "discrete" else tokens.reshape(-1, tokens.shape[-1])
        loss = self.head.loss(z.reshape(-1, z.shape[-1]), target, None)
        return LossOutput(loss, {"loss": float(loss.detach())})

    def sample_tokens(self, labels: torch.Tensor, sampler: GuidedSampler, progress: Progress | None) -> torch.Tensor:
        """Sample one token at a time in raster order; returns tokens in the spec layout.

        ``steps`` must be None or the sequence length h*w*D. With ``use_kv_cache`` each step feeds only the new
        token; without it the whole prefix is recomputed (the reference path; same tokens for the same seed).
        """
        L, B = self.seq_len, labels.shape[0]
        check_fixed_steps(sampler.settings.steps, L, "ar generates one token per step (h*w*depth tokens)")
        P = self.cfg.class_tokens
        x = self.class_slots(sampler.class_labels(labels)) + self.pos_emb[:, :P]  # [B', P, W] the class slots
        decoder = IncrementalDecoder(self.transformer, self.num_slots, x, cached=self.use_kv_cache).start(x)
        out: list[torch.Tensor] = []
        for t in range(L):
            # 1. condition for token t: the transformer output at slot P-1+t (the last class slot for t = 0)
            z = decoder.output()  # [B', W]
            # 2. guidance scale after this token (Muse/MAR linear ramp over the fraction generated)
            tok = sampler.draw(z, (t + 1) / L)
            out.append(tok)
            if progress is not None:
                progress(t + 1, L)
            if t + 1 < L:
                # 3. feed the sampled token to both halves (LlamaGen) at slot P+t
                decoder.push(self.tok_emb(sampler.both(tok))[:, None] + self.pos_emb[:, P + t : P + t + 1])
        tokens = torch.stack(out, dim=1)  # [B, L(, C)]
        return tokens.reshape(B, *self.spec.token_shape).to(self.spec.dtype)
