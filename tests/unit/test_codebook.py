"""The codebook: EMA updates, dead-code restarts, usage and perplexity."""

from __future__ import annotations

import pytest
import torch

from benchkit.nn.codebook import Codebook, code_usage

NAMES = ("vq", "rq", "kl")
# Narrow variants of the tiny defaults so every test stays well under a second on a shared 2-core CPU.
SMALL: dict[str, dict[str, object]] = {
    "vq": {"ch": 8, "codebook_size": 32},
    "rq": {"ch": 8, "codebook_size": 32},
    "kl": {"ch": 8},
}


def nearest_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from each row of a [M, C] to its nearest row of b [N, C] (exact, no matmul expansion)."""
    return (a[:, None, :] - b[None, :, :]).norm(dim=-1).min(dim=1).values


def test_ema_update_moves_codes_toward_assigned_vectors() -> None:
    cb = Codebook(4, 2, decay=0.8, restart_threshold=0.0).train()
    codes = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0], [5.0, -5.0]])
    cb.embed.copy_(codes)
    cb.cluster_size.fill_(10.0)
    cb.embed_sum.copy_(codes * 10.0)
    target = torch.tensor([1.0, 0.5])
    z = target + 0.01 * torch.randn(64, 2)
    ids, _ = cb.quantize(z)
    assert torch.all(ids == 0)
    moved = cb.embed[0]
    # one step with decay 0.8 moves the code most of the way to its assigned vectors
    assert (moved - target).norm() < (codes[0] - target).norm() * 0.5
    assert torch.allclose(cb.embed[1:], codes[1:], atol=1e-3)  # unassigned codes stay (up to Laplace smoothing)
    assert cb.cluster_size[0] > 10.0 and torch.all(cb.cluster_size[1:] < 10.0)


def test_dead_code_restart_replaces_unused_codes_with_batch_vectors() -> None:
    torch.manual_seed(0)
    cb = Codebook(8, 4, decay=0.99, restart_threshold=1.0).train()
    cb.cluster_size.copy_(torch.tensor([50.0, 50.0, 50.0, 50.0, 0.5, 0.5, 0.5, 0.5]))
    cb.embed_sum.copy_(cb.embed * cb.cluster_size[:, None])
    old = cb.embed.clone()
    z = torch.randn(32, 4) * 3.0 + 10.0  # far from every code
    cb.update(z, torch.zeros(32, dtype=torch.long))
    restarted = cb.embed[4:]
    assert nearest_distance(restarted, z).max() < 1e-5  # each restarted code is a batch vector
    assert not torch.allclose(restarted, old[4:])
    assert torch.allclose(cb.embed[1:4], old[1:4], atol=1e-4)  # live codes untouched
    assert torch.all(cb.cluster_size[4:] == 1.0)
    # a fresh codebook (all counts 0) restarts every code from the first batch: data-dependent init
    fresh = Codebook(8, 4).train()
    fresh.quantize(z)
    assert nearest_distance(fresh.embed, z).max() < 1e-5


def test_code_usage_and_perplexity() -> None:
    usage, ppl = code_usage(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), 8)
    assert usage == pytest.approx(0.5) and ppl == pytest.approx(4.0)
