"""What the built-in generators share: their options, their constructor, the checks of ``generate`` and the guided
head draw.

:class:`GeneratorOptions` holds the options every generator config carries (transformer width, heads, MLP ratio,
dropout, label dropout) and checks them; a config subclasses it, as the conv tokenizers' configs subclass
``ConvOptions``. :class:`ClassConditionalGenerator` checks the token layout and the class count, lets the subclass
build its layers (``build``), then builds the per-token head on top of ``cfg.width``-wide condition vectors; the head
is built last, so the generator's weight init leaves the head's own init alone. Its ``generate`` takes one
:class:`~benchkit.core.config.SampleSettings` (checked when it was made), checks the labels, moves them to the model
and hands a :class:`GuidedSampler` holding the settings to the subclass's ``sample_tokens``.

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

from benchkit.core.config import SampleSettings
from benchkit.core.errors import ConfigError, IncompatibleComponentsError
from benchkit.core.interfaces import Head, Progress, TokenSpec
from benchkit.core.registry import HEADS
from benchkit.nn.conditioning import drop_labels, guidance_labels
from benchkit.nn.schedules import cfg_at


@dataclass(frozen=True)
class GeneratorOptions:
    """Options every generator config carries (defaults = the ``tiny`` size); a config adds its own fields (a
    subclass may redeclare one of these to change its default) and names its sizes in :meth:`counts`."""

    width: int = 96  # transformer width, also the width of the head's condition vectors
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    label_drop: float = 0.1  # training: probability of replacing a label by the null class (CFG)

    def counts(self) -> dict[str, int]:
        """The config's own sizes that must be >= 1 (depths, slots, steps), by option name."""
        return {}

    def __post_init__(self) -> None:
        for name, value in {"width": self.width, **self.counts(), "num_heads": self.num_heads}.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be divisible by num_heads {self.num_heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_drop <= 1.0:
            raise ValueError(f"label_drop must be in [0, 1], got {self.label_drop}")


@dataclass(frozen=True)
class GuidedSampler:
    """The sampling setting of one ``generate`` call and the head draw every step makes with it."""

    head: Head
    num_classes: int
    settings: SampleSettings
    generator: torch.Generator | None

    @property
    def guided(self) -> bool:
        """Whether the batch is doubled [conditional; unconditional]."""
        return self.settings.cfg != 1.0

    def class_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels of the batch the model runs: [labels; null class] when guided, else ``labels``."""
        return guidance_labels(labels, self.num_classes, self.guided)

    def both(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` for both halves of a guided batch (the unconditional half sees the same tokens and order)."""
        return torch.cat([x, x]) if self.guided else x

    def draw(self, cond: torch.Tensor, done: float) -> torch.Tensor:
        """Head sample for condition rows ``cond`` (conditional rows first when guided), with ``done`` the fraction
        of tokens generated after this step; a scale of exactly 1 drops the unconditional rows."""
        s = self.settings
        w = cfg_at(s.cfg, s.cfg_schedule, done)
        if self.guided and w == 1.0:
            cond = cond[: len(cond) // 2]
        return self.head.sample(
            cond, temperature=s.temperature, cfg=w, generator=self.generator, diffusion_steps=s.diffusion_steps
        )


class ClassConditionalGenerator(nn.Module):
    """Base of the built-in generators: constructor, ``generate`` checks and guided sampling (see the module doc).

    A subclass sets ``class_emb`` (``class_embedding()``: the last row is the null class) in ``build`` and samples in
    ``sample_tokens``.
    """

    cfg: GeneratorOptions
    spec: TokenSpec
    num_classes: int
    class_emb: nn.Embedding

    def __init__(
        self,
        cfg: GeneratorOptions,
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
        settings: SampleSettings | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Tokens [B, *spec.token_shape] for ``labels`` [B] (the null class ``num_classes`` = unconditional).

        ``settings`` (None: ``SampleSettings()``) was checked when it was made; the checks that depend on the model
        (labels here, steps in ``sample_tokens``) run before any compute. Its ``precision`` is the caller's autocast
        (``benchkit.sampling.generate``). Random draws come from ``generator``; ``progress(done, total)`` after each
        step.
        """
        if settings is None:
            settings = SampleSettings()
        elif not isinstance(settings, SampleSettings):
            raise TypeError(f"settings must be a SampleSettings or None, got {type(settings).__name__}")
        check_labels(labels, self.num_classes)
        sampler = GuidedSampler(self.head, self.num_classes, settings, generator)
        return self.sample_tokens(labels.to(self.class_emb.weight.device), sampler, progress)

    def sample_tokens(self, labels: torch.Tensor, sampler: GuidedSampler, progress: Progress | None) -> torch.Tensor:
        """The generator's sampling loop (``sampler.settings`` is the setting), after ``generate`` checked the
        labels; it checks ``sampler.settings.steps`` against the model before any compute."""
        raise NotImplementedError


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """Raise ConfigError unless ``labels`` is a long tensor [B] in [0, num_classes] (``num_classes``: the null
    class)."""
    if labels.ndim != 1 or labels.dtype != torch.long:
        raise ConfigError(f"labels must be a long tensor [B], got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        raise ConfigError(f"labels must be in [0, {num_classes}] ({num_classes} = unconditional)")


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
