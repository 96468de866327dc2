"""Does a generator use a token's neighbours? Gradient influence of known tokens on a position's head condition.

For a query position p, the influence of token q is the norm of d ||z_p||^2 / d x_q, where z_p is the condition
vector the head receives at p and x_q the (embedded-before) input token at q. Averaged by Chebyshev grid distance
|p - q|, a model that has learned locality shows influence falling with distance; a flat profile means the
model draws on every visible token alike. Supported: ``ar`` (the visible tokens are those before p in raster
order) and ``mar`` (a random order with ``n_masked`` unknown positions; queries are unknown positions). Continuous
tokens only (discrete ids have no gradient).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from benchkit.core.errors import ConfigError

LOCALITY_GENERATORS = ("ar", "mar")


def _kind(generator: nn.Module) -> str:
    """``ar`` or ``mar``: the generator's ``locality_order`` class attribute (how its visible tokens are chosen)."""
    kind = getattr(generator, "locality_order", None)
    if kind not in LOCALITY_GENERATORS:
        raise ConfigError(
            f"locality supports generators {', '.join(LOCALITY_GENERATORS)}; got {type(generator).__name__}"
        )
    return str(kind)


def influence_by_distance(
    generator: nn.Module,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    *,
    queries: int = 3,
    n_masked: int | None = None,
    seed: int = 0,
) -> dict[int, float]:
    """Mean gradient influence of a visible token on a query's condition, per Chebyshev grid distance.

    tokens float [B, h, w, C] (one token per position), labels [B]. ``ar``: queries are ``queries`` positions per
    image from the grid centre diagonally up-left; ``mar``: the first ``queries`` unknown positions of a random order
    with ``n_masked`` unknown (default: 3/4 of the positions).
    """
    kind = _kind(generator)
    if queries < 1:
        raise ConfigError(f"queries must be >= 1, got {queries}")
    if tokens.dim() != 4 or not tokens.is_floating_point():
        raise ConfigError(f"locality needs continuous tokens [B, h, w, C], got {tuple(tokens.shape)} {tokens.dtype}")
    B, h, w, C = tokens.shape
    L = h * w
    x = tokens.reshape(B, L, C).detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    known: list[list[int]] = []
    if kind == "ar":
        z = generator.forward(x, labels)
        # the centre position, then steps of one row and one column up-left (inside the grid, never position 0)
        centre = (h // 2) * w + w // 2
        query = torch.tensor([max(1, centre - j * (w + 1)) for j in range(queries)]).expand(B, queries)
    else:
        m = n_masked if n_masked is not None else (3 * L) // 4
        if not queries <= m < L:
            raise ConfigError(f"n_masked must be in [{queries}, {L - 1}] for {queries} queries, got {m}")
        order = torch.argsort(torch.rand(B, L, generator=g), dim=1).to(x.device)
        z = generator.condition(x, labels, order, m)  # type: ignore[operator]  # MAR's method, not a buffer
        query = order[:, :queries].cpu()
        known = [order[b, m:].tolist() for b in range(B)]
    sums: dict[int, float] = defaultdict(float)
    counts: dict[int, int] = defaultdict(int)
    for b in range(B):
        for j in range(queries):
            p = int(query[b, j])
            (grad,) = torch.autograd.grad(z[b, p].pow(2).sum(), x, retain_graph=True)
            norms = grad[b].norm(dim=-1)
            for q in range(p) if kind == "ar" else known[b]:
                d = max(abs(q // w - p // w), abs(q % w - p % w))
                sums[d] += float(norms[q])
                counts[d] += 1
    return {d: sums[d] / counts[d] for d in sorted(sums)}
