"""Masked autoregressive generator (MAR): a bidirectional MAE-style encoder/decoder over random-order tokens.

Li et al., "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838; reference code
https://github.com/LTH14/mar at fe470ac (models/mar.py). Training masks a random subset of each sample's tokens
(ratio from a truncated normal on [0.7, 1], one draw per batch); the encoder sees ``buffer_size`` class-
embedding slots plus the known tokens only; the decoder fills the masked positions with a learned mask token;
decoder output plus one more learned position table is the condition vector z of the per-token head, whose
loss counts the masked tokens only. Sampling fixes one random order per sample and, following MaskGIT's cosine
schedule, predicts a growing set of tokens per step; ``steps = h*w`` is random-order AR with one token per step.

Deviations:
- The head sees only the masked rows (MAR computes all rows and multiplies by the mask): same loss, less work.
- Discrete tokens enter through an embedding table (MAR's CE variant is unreleased); continuous through Linear.
- One class-embedding table whose last row is the null class replaces MAR's separate ``fake_latent``.
- All randomness at sampling comes from ``generator`` (MAR mixes numpy and torch RNGs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import Batch, LossOutput, Progress, TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.generators.common import (
    ClassConditionalGenerator,
    GeneratorOptions,
    GuidedSampler,
    gather_positions,
    one_token_per_position,
    scatter_positions,
)
from benchkit.nn.conditioning import token_embedding
from benchkit.nn.schedules import mask_ratio_truncnorm, tokens_to_keep_masked
from benchkit.nn.transformer import LN_EPS, Transformer, init_weights


@dataclass(frozen=True)
class MARConfig(GeneratorOptions):
    """Options of the MAR generator (defaults = ``tiny``)."""

    encoder_depth: int = 2
    decoder_depth: int = 2
    buffer_size: int = 8  # class-embedding slots in front of the sequence (64 in MAR)
    mask_ratio_min: float = 0.7
    steps: int = 16  # default generation steps (capped at h*w)

    def counts(self) -> dict[str, int]:
        """Blocks, class slots and default steps (>= 1)."""
        return {
            "encoder_depth": self.encoder_depth,
            "decoder_depth": self.decoder_depth,
            "buffer_size": self.buffer_size,
            "steps": self.steps,
        }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mask_ratio_min < 1.0:
            raise ValueError(f"mask_ratio_min must be in [0, 1), got {self.mask_ratio_min}")


@GENERATORS.register("mar", config=MARConfig)
class MARGenerator(ClassConditionalGenerator):
    """MAR: bidirectional masked autoregression in random order with a per-token head (Li et al. 2024)."""

    cfg: MARConfig
    locality_order = "mar"  # benchkit.metrics.locality: visible tokens are the known ones of a random order

    def build(self) -> None:
        """Token and class embeddings, the MAE encoder/decoder with their position tables, the head's positions."""
        cfg = self.cfg
        self.seq_len = L = self.spec.positions
        W, buf = cfg.width, cfg.buffer_size
        self.tok_emb = token_embedding(self.spec, W)  # continuous: MAR's z_proj
        self.class_emb = self.class_embedding()  # its null-class row replaces MAR's fake_latent
        self.enc_pos = nn.Parameter(torch.zeros(1, buf + L, W))
        self.enc_in_norm = nn.LayerNorm(W, eps=LN_EPS)  # MAR's z_proj_ln, applied after the position embedding
        self.encoder = Transformer(W, cfg.encoder_depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.decoder_embed = nn.Linear(W, W)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, W))
        self.dec_pos = nn.Parameter(torch.zeros(1, buf + L, W))
        self.decoder = Transformer(W, cfg.decoder_depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.head_pos = nn.Parameter(torch.zeros(1, L, W))  # MAR's diffusion_pos_embed_learned
        self.apply(init_weights)
        for p in (self.enc_pos, self.mask_token, self.dec_pos, self.head_pos):
            nn.init.normal_(p, std=0.02)

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> str | None:
        """MAR models one token per grid position; stacked (depth > 1) tokens are refused."""
        return one_token_per_position("mar", spec)

    def condition(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor,
        order: torch.Tensor,
        n_masked: int,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Condition vectors z [B, L, W] for every position, given that ``order[:, :n_masked]`` is unknown.

        tokens [B, L(, C)] (values at unknown positions are ignored), labels [B], order [B, L] a permutation.
        With ``rows`` (long [B, n] positions) only those are returned, [B, n, W]: the same values, and the last
        decoder block computes only them.
        """
        B, L, buf = tokens.shape[0], self.seq_len, self.cfg.buffer_size
        W = self.cfg.width
        known = order[:, n_masked:]  # [B, L - n_masked]: positions the encoder may see
        # 1. encoder input: buffer slots all hold the class embedding, then the known tokens (MAE: sparse)
        cls = self.class_emb(labels)[:, None].expand(B, buf, W)
        # gather, not ``enc_pos[0, buf:][known]`` (see gather_positions)
        pos = gather_positions(self.enc_pos[:, buf:].expand(B, L, W), known)
        seen = self.tok_emb(gather_positions(tokens, known)) + pos  # [B, L - n_masked, W]
        x = torch.cat([cls + self.enc_pos[:, :buf], seen], 1)
        x = self.encoder(self.enc_in_norm(x))  # [B, buf + L - n_masked, W]
        # 2. decoder: scatter back to the full sequence, unknown positions get the learned mask token
        slots = torch.cat([torch.arange(buf, device=order.device).expand(B, buf), known + buf], 1)
        emb = self.decoder_embed(x)  # under autocast: the autocast dtype
        full = self.mask_token.expand(B, buf + L, W).to(emb.dtype).scatter(1, slots[..., None].expand(-1, -1, W), emb)
        if rows is not None:  # 3. one more learned position table gives the head's condition (diffusion_pos_embed)
            return self.decoder.forward_rows(full + self.dec_pos, rows + buf) + self.head_pos[0][rows]
        z = self.decoder(full + self.dec_pos)[:, buf:]  # drop the buffer: [B, L, W]
        return z + self.head_pos

    def loss(self, batch: Batch) -> LossOutput:
        """Head loss on the masked tokens of a random order with a truncated-normal mask ratio (MAR Sec. 3.3)."""
        B, L = batch.tokens.shape[0], self.seq_len
        tokens, labels = self.as_sequence(batch.tokens, L), self.training_labels(batch.labels)
        # 1. one mask ratio per batch, one random order per sample; the first ceil(L*r) positions are unknown
        ratio = mask_ratio_truncnorm(low=self.cfg.mask_ratio_min)
        n_masked = min(L, max(1, math.ceil(L * ratio)))
        order = torch.argsort(torch.rand(B, L, device=tokens.device), dim=1)
        z = self.condition(tokens, labels, order, n_masked)
        # 2. loss on the masked tokens only
        masked = order[:, :n_masked]
        cond = gather_positions(z, masked).reshape(B * n_masked, -1)
        target = gather_positions(tokens, masked)
        target = target.reshape(B * n_masked, *target.shape[2:])
        loss = self.head.loss(cond, target, None)
        return LossOutput(loss, {"loss": float(loss.detach()), "mask_ratio": n_masked / L})

    def sample_tokens(self, labels: torch.Tensor, sampler: GuidedSampler, progress: Progress | None) -> torch.Tensor:
        """Sample in ``steps`` rounds (default ``cfg.steps``, at most h*w) along one random order per sample."""
        L, B, steps = self.seq_len, labels.shape[0], sampler.settings.steps
        K = min(self.cfg.steps, L) if steps is None else steps
        if K > L:
            raise ConfigError(f"mar steps must be in [1, {L}] (h*w tokens), got {steps}")
        device = labels.device
        cond_labels, both = sampler.class_labels(labels), sampler.both
        # 1. one random generation order per sample, fixed for the whole loop (MAR: fully random order)
        order = torch.argsort(torch.rand(B, L, generator=sampler.generator, device=device), dim=1)
        shape = (B, L) if self.spec.kind == "discrete" else (B, L, int(self.spec.dim or 0))
        tokens = torch.zeros(shape, dtype=self.spec.dtype, device=device)
        masked_before = L
        for k in range(K):
            # 2. cosine schedule (MaskGIT, as in MAR's sample_tokens): m_k = floor(L cos(pi/2 (k+1)/K)) stay masked
            masked_after = tokens_to_keep_masked(L, k, K)
            if masked_after < masked_before:
                # 3. predict the masked positions that leave the mask now: order[:, masked_after:masked_before]
                new = order[:, masked_after:masked_before]  # [B, n]
                n = new.shape[1]
                z = self.condition(both(tokens), cond_labels, both(order), masked_before, rows=both(new))  # [B', n, W]
                # 4. guidance scale for the fraction generated after this step (Muse/MAR linear ramp)
                sampled = sampler.draw(z.reshape(-1, z.shape[-1]), (L - masked_after) / L)  # conditional rows first
                sampled = sampled.reshape(B, n, *shape[2:]).to(tokens.dtype)
                tokens = scatter_positions(tokens, new, sampled)
                masked_before = masked_after
            if progress is not None:
                progress(k + 1, K)
        return tokens.reshape(B, *self.spec.token_shape)
