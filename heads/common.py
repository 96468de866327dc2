"""What the heads share: the token-kind check and the masked mean of per-row losses."""

from __future__ import annotations

from typing import cast

import torch

from benchkit.core.errors import IncompatibleComponentsError
from benchkit.core.interfaces import Head, TokenKind, TokenSpec
from benchkit.core.registry import HEADS


def check_head_kind(name: str, kinds: tuple[TokenKind, ...], spec: TokenSpec) -> None:
    """Raise IncompatibleComponentsError unless the head ``name`` models ``spec.kind``; list the heads that do."""
    if spec.kind in kinds:
        return
    valid = [n for n in HEADS.names() if spec.kind in cast("type[Head]", HEADS.get(n).factory).kinds]
    raise IncompatibleComponentsError(
        f"head {name!r} models {' or '.join(kinds)} tokens, but the tokenizer gives {spec.kind} tokens; "
        f"valid heads for {spec.kind} tokens: {', '.join(valid) or '(none)'}"
    )


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-row values [N] over rows where mask [N] is 1 (all rows when mask is None; 0 if none is)."""
    if mask is None:
        return values.mean()
    w = mask.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)
