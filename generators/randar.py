"""Random-order causal AR: a causal transformer over a random permutation of the token grid, one token per step.

The "MAR, random order, causal attention" rows of MAR's Table 1 (Li et al., arXiv 2406.11838, Sec. 4.2 and
Fig. 3): a GPT-style decoder, as in the raster ``ar`` generator, but each training sample is read in its own
random order, and because the next position is no longer implied by the slot index, the model is told at each
step which position it predicts next: the embedding of that target position is added to the input of the slot
whose output predicts it. Slot 0 holds the class (or null class) embedding plus the target embedding of the first
position of the order; slot t holds the embedding of the t-th generated token plus its own position embedding plus
the target embedding of the next position. The output at slot t is the condition of the per-token head (cross-
entropy or Diffusion Loss) for the token at ``order[t]``. Training is teacher forcing over the whole permuted
sequence; sampling draws one order per sample and one token per step, with a KV cache (the uncached path
recomputes the prefix and gives the same tokens for the same seed). Classifier-free guidance as in ``ar``: the
batch is doubled [conditional; unconditional], both halves see the same tokens and order.

Relation to MAR (``mar`` with ``steps = h*w``): same random order and one prediction per step, but attention is
causal over the generated prefix, so earlier tokens never see later ones and keys/values can be cached; MAR's
bidirectional encoder/decoder recomputes everything at every step.

Deviations:
- MAR's causal variant is unreleased; its description (the position of the next token is given to the model) is
  followed with learned absolute embeddings: one table for where a token is, one for which position comes next.
- No per-position table added to the head's condition (MAR's ``diffusion_pos_embed``): the target position is
  already in the slot's input.
- ``order = "raster"`` reads the grid in raster order (a check that order is the only difference from ``ar``).
- Stacked tokens (depth > 1) are refused, as in ``mar``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchkit.core.interfaces import Batch, LossOutput, Progress, TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.generators.common import (
    ClassConditionalGenerator,
    GeneratorOptions,
    GuidedSampler,
    check_fixed_steps,
    gather_positions,
    one_token_per_position,
    scatter_positions,
)
from benchkit.nn.conditioning import token_embedding
from benchkit.nn.transformer import IncrementalDecoder, Transformer, init_weights

Order = Literal["random", "raster"]


@dataclass(frozen=True)
class RandARConfig(GeneratorOptions):
    """Options of the random-order causal AR generator (defaults = ``tiny``, same backbone as ``ar``)."""

    depth: int = 4  # transformer blocks: MAR's encoder + decoder depth, so backbones match
    order: Order = "random"
    use_kv_cache: bool = True

    def counts(self) -> dict[str, int]:
        """Blocks (>= 1)."""
        return {"depth": self.depth}


@GENERATORS.register("randar", config=RandARConfig)
class RandARGenerator(ClassConditionalGenerator):
    """Random-order causal AR told the next position at every step (MAR Table 1, "random order, causal")."""

    cfg: RandARConfig

    def build(self) -> None:
        """Token and class embeddings, the position and next-target tables, the causal transformer."""
        cfg = self.cfg
        self.use_kv_cache = cfg.use_kv_cache
        self.seq_len = L = self.spec.positions
        W = cfg.width
        self.tok_emb = token_embedding(self.spec, W)
        self.class_emb = self.class_embedding()
        self.pos_emb = nn.Parameter(torch.zeros(1, L, W))  # where the token of a slot sits
        self.target_emb = nn.Parameter(torch.zeros(1, L, W))  # which position the slot's output predicts
        self.transformer = Transformer(W, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.apply(init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.target_emb, std=0.02)

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> str | None:
        """One token per grid position; stacked (depth > 1) tokens are refused."""
        return one_token_per_position("randar", spec)

    def sample_order(
        self, batch: int, *, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One permutation of the h*w positions per sample [B, L] (raster: the identity for every sample)."""
        L = self.seq_len
        if self.cfg.order == "raster":
            return torch.arange(L, device=device).expand(batch, L).clone()
        return torch.argsort(torch.rand(batch, L, generator=generator, device=device), dim=1)

    def _slot(self, emb: torch.Tensor, order: torch.Tensor, t: int) -> torch.Tensor:
        """Input of slot t+1 [B', 1, W]: token embedding at order[:, t] plus its position plus the next target."""
        x = emb + self.pos_emb[0][order[:, t]]
        if t + 1 < self.seq_len:
            x = x + self.target_emb[0][order[:, t + 1]]
        return x[:, None]

    def condition(self, tokens: torch.Tensor, labels: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: z [B, L, W] where z[:, t] is the condition of the token at position order[:, t].

        tokens [B, L(, C)] in grid order, labels [B], order [B, L] a permutation per sample.
        """
        seq = gather_positions(tokens, order)  # tokens in generation order
        first = self.class_emb(labels)[:, None]  # [B, 1, W]
        rest = self.tok_emb(seq[:, :-1]) + gather_positions(self.pos_emb.expand(len(order), -1, -1), order[:, :-1])
        x = torch.cat([first, rest], dim=1) + gather_positions(self.target_emb.expand(len(order), -1, -1), order)
        return self.transformer(x, causal=True)

    def loss(self, batch: Batch) -> LossOutput:
        """Head loss over every token of a per-sample random order, labels dropped to the null class."""
        B, L = batch.tokens.shape[0], self.seq_len
        tokens, labels = self.as_sequence(batch.tokens, L), self.training_labels(batch.labels)
        order = self.sample_order(B, device=tokens.device)
        z = self.condition(tokens, labels, order)  # [B, L, W]
        target = gather_positions(tokens, order)
        loss = self.head.loss(z.reshape(B * L, -1), target.reshape(B * L, *target.shape[2:]), None)
        return LossOutput(loss, {"loss": float(loss.detach())})

    def sample_tokens(self, labels: torch.Tensor, sampler: GuidedSampler, progress: Progress | None) -> torch.Tensor:
        """Sample one token per step along one order per sample (drawn first from the sampling generator).

        ``steps`` must be None or h*w. With ``use_kv_cache`` each step feeds only the new slot; without it the
        whole prefix is recomputed (the reference path; same tokens for the same seed).
        """
        L, B = self.seq_len, labels.shape[0]
        check_fixed_steps(sampler.settings.steps, L, "randar generates one token per step (h*w tokens)")
        order = self.sample_order(B, device=labels.device, generator=sampler.generator)
        both_order = sampler.both(order)  # the unconditional half follows the same order
        x = (self.class_emb(sampler.class_labels(labels)) + self.target_emb[0][both_order[:, 0]])[:, None]  # slot 0
        decoder = IncrementalDecoder(self.transformer, L, x, cached=self.use_kv_cache).start(x)
        shape = (B, L) if self.spec.kind == "discrete" else (B, L, int(self.spec.dim or 0))
        tokens = torch.zeros(shape, dtype=self.spec.dtype, device=labels.device)
        for t in range(L):
            # 1. condition for the token at order[:, t]: the output of slot t; guidance after this token
            tok = sampler.draw(decoder.output(), (t + 1) / L).to(self.spec.dtype)
            # 2. write it at its grid position
            tokens = scatter_positions(tokens, order[:, t : t + 1], tok[:, None])
            if progress is not None:
                progress(t + 1, L)
            if t + 1 < L:
                # 3. the next slot: this token, where it sits, and which position comes next
                decoder.push(self._slot(self.tok_emb(sampler.both(tok)), both_order, t))
        return tokens.reshape(B, *self.spec.token_shape)
