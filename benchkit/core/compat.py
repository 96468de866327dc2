"""Which (tokenizer, generator, head) triples make sense, derived from token kinds, checked before any compute."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchkit.core.errors import IncompatibleComponentsError
from benchkit.core.interfaces import TokenKind, TokenSpec
from benchkit.core.registry import GENERATORS, HEADS, TOKENIZERS


@dataclass(frozen=True)
class Combination:
    """A checked triple and the token view it uses."""

    tokenizer: str
    generator: str
    head: str
    kind: TokenKind
    spec: TokenSpec


def tokenizer_specs(
    name: str, options: dict[str, Any] | None = None, image_size: int = 32
) -> dict[TokenKind, TokenSpec]:
    """Token views of a tokenizer config (builds the untrained module: cheap at every size benchkit ships)."""
    return dict(TOKENIZERS.create(name, image_size=image_size, **(options or {})).specs)


def _reason(specs: dict[TokenKind, TokenSpec], generator: str, head: str) -> str | None:
    kinds = getattr(HEADS.get(head).factory, "kinds")  # noqa: B009 - a class attribute of every head
    usable = [k for k in kinds if k in specs]
    if not usable:
        return f"head {head!r} needs {'/'.join(kinds)} tokens but the tokenizer gives {'/'.join(specs)}"
    return getattr(GENERATORS.get(generator).factory, "check_spec")(specs[usable[0]])  # noqa: B009


def valid_heads(specs: dict[TokenKind, TokenSpec], generator: str) -> list[str]:
    """Heads that work with this tokenizer's token views and this generator."""
    return [h for h in HEADS.names() if _reason(specs, generator, h) is None]


def check_combination(
    tokenizer: str, generator: str, head: str, *, tokenizer_options: dict[str, Any] | None = None, image_size: int = 32
) -> Combination:
    """Return the checked combination or raise IncompatibleComponentsError listing the valid heads."""
    specs = tokenizer_specs(tokenizer, tokenizer_options, image_size)
    GENERATORS.get(generator)
    HEADS.get(head)
    reason = _reason(specs, generator, head)
    if reason is not None:
        heads = valid_heads(specs, generator)
        raise IncompatibleComponentsError(
            f"{tokenizer} + {generator} + {head} cannot work: {reason}; valid heads for {tokenizer} + {generator}: "
            f"{', '.join(heads) or 'none (try another generator)'}"
        )
    kind = next(k for k in getattr(HEADS.get(head).factory, "kinds") if k in specs)  # noqa: B009
    return Combination(tokenizer, generator, head, kind, specs[kind])


def compatibility_table(image_size: int = 32) -> list[dict[str, str]]:
    """Every registered triple with 'ok' or the reason it is refused."""
    rows = []
    for t in TOKENIZERS.names():
        specs = tokenizer_specs(t, None, image_size)
        for g in GENERATORS.names():
            for h in HEADS.names():
                r = _reason(specs, g, h)
                rows.append({"tokenizer": t, "generator": g, "head": h, "status": "ok" if r is None else r})
    return rows
