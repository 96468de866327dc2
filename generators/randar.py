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

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from benchkit.errors import ConfigError, IncompatibleComponentsError
from benchkit.interfaces import Batch, LossOutput, Progress, TokenSpec
from benchkit.nn.conditioning import check_transformer_options, drop_labels, guidance_labels
from benchkit.nn.transformer import Transformer, init_weights
from benchkit.registry import GENERATORS, HEADS
from benchkit.schedules import cfg_at, check_sampling_args

log = logging.getLogger(__name__)

Order = Literal["random", "raster"]


@dataclass(frozen=True)
class RandARConfig:
    """Options of the random-order causal AR generator (defaults = ``tiny``, same backbone as ``ar``)."""

    width: int = 96
    depth: int = 4  # transformer blocks: MAR's encoder + decoder depth, so backbones match
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    label_drop: float = 0.1
    order: Order = "random"
    use_kv_cache: bool = True

    def __post_init__(self) -> None:
        if self.width < 1 or self.depth < 1 or self.num_heads < 1:
            raise ValueError(f"width, depth, num_heads must be >= 1, got {self.width}, {self.depth}, {self.num_heads}")
        check_transformer_options(self)


def gather_positions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...], idx [B, n] -> x[b, idx[b]] as [B, n, ...]."""
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:]))


@GENERATORS.register("randar", config=RandARConfig)
class RandARGenerator(nn.Module):
    """Random-order causal AR told the next position at every step (MAR Table 1, "random order, causal")."""

    def __init__(
        self,
        cfg: RandARConfig,
        *,
        spec: TokenSpec,
        head: str,
        head_options: dict[str, Any] | None = None,
        num_classes: int,
    ) -> None:
        super().__init__()
        reason = self.check_spec(spec)
        if reason is not None:
            raise IncompatibleComponentsError(reason)
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg, self.spec, self.num_classes = cfg, spec, num_classes
        self.use_kv_cache = cfg.use_kv_cache
        self.seq_len = L = spec.positions
        W = cfg.width
        if spec.kind == "discrete":
            self.tok_emb: nn.Module = nn.Embedding(int(spec.vocab_size or 0), W)
        else:
            self.tok_emb = nn.Linear(int(spec.dim or 0), W)
        self.class_emb = nn.Embedding(num_classes + 1, W)  # row num_classes = null class (CFG)
        self.pos_emb = nn.Parameter(torch.zeros(1, L, W))  # where the token of a slot sits
        self.target_emb = nn.Parameter(torch.zeros(1, L, W))  # which position the slot's output predicts
        self.transformer = Transformer(W, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.apply(init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.target_emb, std=0.02)
        self.head = HEADS.create(head, spec=spec, cond_dim=W, **(head_options or {}))

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> str | None:
        """One token per grid position; stacked (depth > 1) tokens are refused."""
        if spec.depth != 1:
            return f"randar models one token per position (depth 1), got depth {spec.depth}; use rqtransformer or ar"
        return None

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
        tokens, labels = batch.tokens, batch.labels
        B, L = tokens.shape[0], self.seq_len
        tokens = tokens.reshape(B, L) if self.spec.kind == "discrete" else tokens.reshape(B, L, -1)
        if self.training:
            labels = drop_labels(labels, self.cfg.label_drop, self.num_classes)
        order = self.sample_order(B, device=tokens.device)
        z = self.condition(tokens, labels, order)  # [B, L, W]
        target = gather_positions(tokens, order)
        loss = self.head.loss(z.reshape(B * L, -1), target.reshape(B * L, *target.shape[2:]), None)
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
        """Sample one token per step along one order per sample (drawn first from ``generator``).

        ``steps`` must be None or h*w. With ``use_kv_cache`` each step feeds only the new slot; without it the
        whole prefix is recomputed (the reference path; same tokens for the same seed).
        """
        check_sampling_args(
            labels, self.num_classes, steps=steps, cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature,
            diffusion_steps=diffusion_steps,
        )
        labels = labels.to(self.class_emb.weight.device)
        L, B = self.seq_len, labels.shape[0]
        if steps is not None and steps != L:
            raise ConfigError(f"randar generates one token per step: steps must be None or {L} (h*w), got {steps}")
        guided = cfg != 1.0
        order = self.sample_order(B, device=labels.device, generator=generator)
        both_order = torch.cat([order, order]) if guided else order  # the unconditional half follows the same order
        x = (self.class_emb(guidance_labels(labels, self.num_classes, guided)) + self.target_emb[0][both_order[:, 0]])
        x = x[:, None]  # [B', 1, W] slot 0
        cache = self.transformer.new_cache(x.shape[0], L, x) if self.use_kv_cache else None
        prefix = x
        shape = (B, L) if self.spec.kind == "discrete" else (B, L, int(self.spec.dim or 0))
        tokens = torch.zeros(shape, dtype=self.spec.dtype, device=labels.device)
        for t in range(L):
            # 1. condition for the token at order[:, t]: the output of slot t
            z = self.transformer(x if cache is not None else prefix, causal=True, cache=cache)[:, -1]
            w = cfg_at(cfg, cfg_schedule, (t + 1) / L)  # guidance after this token (linear: MAR's ramp)
            if guided and w == 1.0:
                z = z[:B]
            tok = self.head.sample(z, temperature=temperature, cfg=w, generator=generator,
                                   diffusion_steps=diffusion_steps).to(self.spec.dtype)
            # 2. write it at its grid position
            idx = order[:, t].view(B, 1, *([1] * (tokens.ndim - 2))).expand(B, 1, *shape[2:])
            tokens = tokens.scatter(1, idx, tok[:, None])
            if progress is not None:
                progress(t + 1, L)
            if t + 1 < L:
                # 3. the next slot: this token, where it sits, and which position comes next
                tok_in = torch.cat([tok, tok]) if guided else tok
                x = self._slot(self.tok_emb(tok_in), both_order, t)
                if cache is None:
                    prefix = torch.cat([prefix, x], dim=1)
        return tokens.reshape(B, *self.spec.token_shape)
