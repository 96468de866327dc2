"""The contracts between the three families. Generators and heads know the tokenizer only through TokenSpec.

Shapes (B batch, h x w token grid, D depth, C channels per continuous token, N rows given to a head):

=====================  =============================  ===========================================
token view             tensor per batch               TokenSpec
=====================  =============================  ===========================================
discrete, depth 1      long  [B, h, w]                kind="discrete", depth=1, vocab_size=K
discrete, depth D      long  [B, h, w, D]             kind="discrete", depth=D, vocab_size=K
continuous, depth 1    float [B, h, w, C]             kind="continuous", depth=1, dim=C
continuous, depth D    float [B, h, w, D, C]          kind="continuous", depth=D, dim=C (RQ per-depth codes)
=====================  =============================  ===========================================

Images are float [B, 3, H, W] in [-1, 1]. Continuous tokens are already scaled to roughly unit variance: the
scale factor is the tokenizer's business.

How the registries build each family (``create(name, **options)`` fills the config dataclass ``cfg`` from the
options and passes the rest as build context), i.e. the constructor signatures every component must accept:

- tokenizer: ``Tokenizer(cfg, *, image_size: int)``
- head: ``Head(cfg, *, spec: TokenSpec, cond_dim: int)``
- generator: ``Generator(cfg, *, spec: TokenSpec, head: str, head_options: dict | None, num_classes: int)``; it
  builds its own head with ``HEADS.create(head, spec=..., cond_dim=..., **head_options)``.

The protocol classes below list every attribute and method the pipeline calls; a contract test checks each
registered component (plugins included) against them (tests/unit/test_contracts.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

import torch

from benchkit.core.config import SampleSettings

TokenKind = Literal["discrete", "continuous"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("discrete", "continuous")
Progress = Callable[[int, int], None]  # (step done, total steps)


@dataclass(frozen=True)
class TokenSpec:
    """What a tokenizer hands to generators and heads: kind, grid, depth, vocabulary or channel count."""

    kind: TokenKind
    grid: tuple[int, int]
    depth: int = 1
    vocab_size: int | None = None
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "discrete" and not self.vocab_size:
            raise ValueError("a discrete TokenSpec needs vocab_size")
        if self.kind == "continuous" and not self.dim:
            raise ValueError("a continuous TokenSpec needs dim")

    @property
    def positions(self) -> int:
        """Number of grid positions h*w."""
        return self.grid[0] * self.grid[1]

    @property
    def token_shape(self) -> tuple[int, ...]:
        """Shape of one sample's tokens (without the batch dimension)."""
        shape: tuple[int, ...] = tuple(self.grid)
        if self.depth > 1:
            shape += (self.depth,)
        if self.kind == "continuous":
            shape += (int(self.dim or 0),)
        return shape

    @property
    def dtype(self) -> torch.dtype:
        """torch.long for discrete tokens, torch.float32 for continuous ones."""
        return torch.long if self.kind == "discrete" else torch.float32

    def check(self, tokens: torch.Tensor) -> None:
        """Raise ValueError unless ``tokens`` is a batch of this spec (shape, dtype, id range)."""
        if tuple(tokens.shape[1:]) != self.token_shape:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not match spec {self.token_shape}")
        if tokens.dtype != self.dtype:
            raise ValueError(f"tokens of dtype {tokens.dtype} do not match spec {self.dtype}")
        if self.kind == "discrete" and tokens.numel() and (tokens.min() < 0 or tokens.max() >= (self.vocab_size or 0)):
            raise ValueError(f"token ids outside [0, {self.vocab_size})")


class Batch(NamedTuple):
    """A training batch for a generator: tokens in a TokenSpec layout and class labels long [B]; ``targets``, when
    set, replaces the tokens as the head's targets (soft targets of the RQ-Transformer: float [B, h, w, D, K])."""

    tokens: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None


class LossOutput(NamedTuple):
    """A scalar loss plus float logs for the progress bar and CSV log; a tokenizer also returns the images its
    training forward decoded (``recon``, float [B, 3, H, W], not clamped) for losses on images such as LPIPS."""

    loss: torch.Tensor
    logs: dict[str, float]
    recon: torch.Tensor | None = None


@runtime_checkable
class Tokenizer(Protocol):
    """images <-> tokens. ``specs`` lists every token view it can hand out (VQ: discrete and continuous); the first
    entry is the tokenizer's native view."""

    specs: Mapping[TokenKind, TokenSpec]

    def encode(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor, kind: TokenKind) -> torch.Tensor: ...

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """decode(encode(images)) through the native view: float [B, 3, H, W] in [-1, 1]."""
        ...

    def loss(self, images: torch.Tensor) -> LossOutput: ...

    def calibrate(self, images: torch.Tensor, batch_size: int = 256) -> None:
        """Set the continuous-token scale from training images (after training, before caching tokens)."""
        ...

    def encode_for_cache(self, images: torch.Tensor, kind: TokenKind) -> torch.Tensor: ...

    def tokens_from_cache(
        self, cached: torch.Tensor, kind: TokenKind, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


@runtime_checkable
class Head(Protocol):
    """The distribution of ONE token given its condition vector. CFG: with cfg != 1 ``cond`` holds 2N rows
    (conditional first, then unconditional) and ``sample`` returns the N guided rows. ``diffusion_steps`` is the
    sampling chain length of heads that have one (None: the head's default); the others ignore it."""

    kinds: ClassVar[tuple[TokenKind, ...]]

    def loss(self, cond: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def sample(
        self,
        cond: torch.Tensor,
        *,
        temperature: float = 1.0,
        cfg: float = 1.0,
        generator: torch.Generator | None = None,
        diffusion_steps: int | None = None,
    ) -> torch.Tensor: ...


@runtime_checkable
class Generator(Protocol):
    """Class-conditional sequence model over tokens; builds its own head from ``spec``. Labels run over
    ``[0, num_classes)``; ``num_classes`` itself is the null (unconditional) class used by CFG."""

    spec: TokenSpec
    num_classes: int
    head: Any  # a Head

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> str | None:
        """None when the generator can model ``spec``, else the reason it cannot (the compatibility table)."""
        ...

    def loss(self, batch: Batch) -> LossOutput: ...

    def bind_tokenizer(self, tokenizer: Any) -> None:
        """Called once before training from scratch: copy what the generator reads from its tokenizer (the RQ
        codebook of the official RQ-Transformer embedding); most generators read nothing."""
        ...

    def generate(
        self,
        labels: torch.Tensor,
        settings: SampleSettings | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor: ...
