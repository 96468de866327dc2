"""What the built-in generators share: their constructor, the checks of ``generate`` and the guided head draw.

:class:`ClassConditionalGenerator` checks the token layout and the class count, lets the subclass build its layers
(``build``), then builds the per-token head on top of ``cfg.width``-wide condition vectors; the head is built last,
so the generator's weight init leaves the head's own init alone. Its ``generate`` checks the arguments, moves the
labels to the model and hands a :class:`GuidedSampler` to the subclass's ``sample_tokens``.

Classifier-free guidance (LlamaGen, MAR): a guided call runs one doubled batch [conditional rows; unconditional
rows], both halves fed the same tokens (:meth:`GuidedSampler.both`); at each step the guidance scale follows the
schedule over the fraction of tokens generated after the step, and the head mixes the two halves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchkit.core.errors import ConfigError, IncompatibleComponentsError
from benchkit.core.interfaces import Progress, TokenSpec
from benchkit.core.registry import HEADS
from benchkit.nn.conditioning import drop_labels, guidance_labels
from benchkit.nn.schedules import cfg_at, check_sampling_args


@dataclass(frozen=True)
class GuidedSampler:
    """The sampling options of one ``generate`` call and the head draw every step makes with them."""

    head: Any  # a Head
    num_classes: int
    cfg: float
    cfg_schedule: str
    temperature: float
    generator: torch.Generator | None
    diffusion_steps: int | None

    @property
    def guided(self) -> bool:
        """Whether the batch is doubled [conditional; unconditional]."""
        return self.cfg != 1.0

    def class_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels of the batch the model runs: [labels; null class] when guided, else ``labels``."""
        return guidance_labels(labels, self.num_classes, self.guided)

    def both(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` for both halves of a guided batch (the unconditional half sees the same tokens and order)."""
        return torch.cat([x, x]) if self.guided else x

    def draw(self, cond: torch.Tensor, done: float) -> torch.Tensor:
        """Head sample for condition rows ``cond`` (conditional rows first when guided), with ``done`` the fraction
        of tokens generated after this step; a scale of exactly 1 drops the unconditional rows."""
        w = cfg_at(self.cfg, self.cfg_schedule, done)
        if self.guided and w == 1.0:
            cond = cond[: len(cond) // 2]
        return self.head.sample(
            cond, temperature=self.temperature, cfg=w, generator=self.generator, diffusion_steps=self.diffusion_steps
        )


class ClassConditionalGenerator(nn.Module):
    """Base of the built-in generators: constructor, ``generate`` checks and guided sampling (see the module doc).

    A subclass sets ``class_emb`` (``class_embedding()``: the last row is the null class) in ``build`` and samples in
    ``sample_tokens``.
    """

    cfg: Any
    spec: TokenSpec
    num_classes: int
    class_emb: nn.Embedding

    def __init__(
        self,
        cfg: Any,
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
        self.cfg, self.spec, self.num_classes, self.head_name = cfg, spec, num_classes, head
        self.build()
        # one head models one token (one code of a stack), so its spec has depth 1
        self.head = HEADS.create(
            head, spec=dataclasses.replace(spec, depth=1), cond_dim=cfg.width, **(head_options or {})
        )

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> str | None:
        """None when the generator can model ``spec``, else the reason it cannot."""
        return None

    def build(self) -> None:
        """Create and initialise the generator's layers (everything but the head)."""
        raise NotImplementedError

    def bind_tokenizer(self, tokenizer: nn.Module) -> None:
        """Before training from scratch: take what the generator reads from its tokenizer (here: nothing)."""

    def class_embedding(self) -> nn.Embedding:
        """Class table of ``num_classes + 1`` rows of width ``cfg.width``; row ``num_classes`` is the null class."""
        return nn.Embedding(self.num_classes + 1, self.cfg.width)

    def as_sequence(self, tokens: torch.Tensor, length: int) -> torch.Tensor:
        """Tokens in spec layout [B, ...] -> one sequence [B, length] (discrete) or [B, length, C] (continuous)."""
        B = tokens.shape[0]
        return tokens.reshape(B, length) if self.spec.kind == "discrete" else tokens.reshape(B, length, -1)

    def training_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """In training, each label dropped to the null class with probability ``cfg.label_drop`` (CFG training)."""
        return drop_labels(labels, self.cfg.label_drop, self.num_classes) if self.training else labels

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
        """Tokens [B, *spec.token_shape] for ``labels`` [B] (the null class ``num_classes`` = unconditional)."""
        check_sampling_args(
            labels,
            self.num_classes,
            steps=steps,
            cfg=cfg,
            cfg_schedule=cfg_schedule,
            temperature=temperature,
            diffusion_steps=diffusion_steps,
        )
        sampler = GuidedSampler(self.head, self.num_classes, cfg, cfg_schedule, temperature, generator, diffusion_steps)
        return self.sample_tokens(labels.to(self.class_emb.weight.device), steps, sampler, progress)

    def sample_tokens(
        self, labels: torch.Tensor, steps: int | None, sampler: GuidedSampler, progress: Progress | None
    ) -> torch.Tensor:
        """The generator's sampling loop, after ``generate`` checked its arguments."""
        raise NotImplementedError


def one_token_per_position(name: str, spec: TokenSpec) -> str | None:
    """``check_spec`` of a generator that models one token per grid position: stacked (depth > 1) tokens refused."""
    if spec.depth != 1:
        return f"{name} models one token per position (depth 1), got depth {spec.depth}; use rqtransformer or ar"
    return None


def check_fixed_steps(steps: int | None, n: int, what: str) -> None:
    """Raise ConfigError unless ``steps`` is None or ``n`` (generators that take exactly one step per token)."""
    if steps is not None and steps != n:
        raise ConfigError(f"{what}: steps must be None or {n}, got {steps}")


def gather_positions(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, L, ...], idx [B, n] -> x[b, idx[b]] as [B, n, ...].

    A gather, not advanced indexing: the backward of indexing with repeated indices adds with float atomics on
    several CPU threads (the order, so the bits, vary run to run); gather's does not.
    """
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:]))


def scatter_positions(x: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of x [B, L, ...] with x[b, idx[b]] = values[b] (idx [B, n], values [B, n, ...])."""
    return x.scatter(1, idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand_as(values), values)
