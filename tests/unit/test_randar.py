"""Order handling of the random-order causal AR generator (the shared contract and KV cache tests are in
test_generators.py): permutations, where sampled tokens land, causality along the order, the target position,
and agreement between teacher forcing and incremental sampling."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from benchkit.core.config import SampleSettings
from benchkit.core.errors import ConfigError, IncompatibleComponentsError
from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS

SPEC = TokenSpec("discrete", (2, 3), 1, vocab_size=16)
CSPEC = TokenSpec("continuous", (2, 3), 1, dim=4)
L = 6


def build(spec: TokenSpec = SPEC, **options: Any) -> Any:
    torch.manual_seed(0)
    head, head_options = (
        ("ce", {})
        if spec.kind == "discrete"
        else ("diffloss", {"width": 32, "depth": 1, "batch_mul": 1, "sampling_steps": 3})
    )
    opts = {"width": 32, "depth": 2, "num_heads": 2, **options}
    return GENERATORS.create("randar", spec=spec, head=head, head_options=head_options, num_classes=3, **opts).eval()


def test_orders_are_per_sample_permutations_and_raster_is_identity() -> None:
    model = build()
    order = model.sample_order(64, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert order.shape == (64, L)
    assert torch.equal(order.sort(dim=1).values, torch.arange(L).expand(64, L))
    assert len({tuple(r.tolist()) for r in order}) > 30  # 720 permutations: 64 draws are mostly distinct
    raster = build(order="raster").sample_order(3, device=torch.device("cpu"))
    assert torch.equal(raster, torch.arange(L).expand(3, L))


def test_sampled_token_of_step_t_lands_at_order_t() -> None:
    model = build()
    step = {"t": 0}

    def fake_sample(cond: torch.Tensor, **_: Any) -> torch.Tensor:  # the token of step t is the id t
        out = torch.full((cond.shape[0],), step["t"], dtype=torch.long)
        step["t"] += 1
        return out

    model.head.sample = fake_sample
    out = model.generate(torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(5)).reshape(3, L)
    order = build().sample_order(3, device=torch.device("cpu"), generator=torch.Generator().manual_seed(5))
    for b in range(3):
        assert out[b, order[b]].tolist() == list(range(L))


@pytest.mark.parametrize("spec", [SPEC, CSPEC], ids=["ce", "diffloss"])
def test_teacher_forcing_matches_incremental_sampling(spec: TokenSpec) -> None:
    """The condition each sampling step hands the head equals the training-time condition of that token."""
    model = build(spec)
    seen: list[torch.Tensor] = []
    sample = model.head.sample

    def spy(cond: torch.Tensor, **kw: Any) -> torch.Tensor:
        seen.append(cond.clone())
        return sample(cond, **kw)

    model.head.sample = spy
    labels = torch.tensor([0, 2])
    tokens = model.generate(labels, generator=torch.Generator().manual_seed(1))
    order = model.sample_order(2, device=torch.device("cpu"), generator=torch.Generator().manual_seed(1))
    flat = tokens.reshape(2, L) if spec.kind == "discrete" else tokens.reshape(2, L, -1)
    with torch.no_grad():
        z = model.condition(flat, labels, order)
    assert len(seen) == L
    assert torch.allclose(torch.stack(seen, 1), z, atol=1e-5), (torch.stack(seen, 1) - z).abs().max()


def test_causal_along_the_order_and_told_the_target() -> None:
    model = build()
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 16, (2, L), generator=g)
    labels = torch.tensor([1, 1])
    order = model.sample_order(2, device=torch.device("cpu"), generator=g)
    with torch.no_grad():
        z = model.condition(tokens, labels, order)
        changed = tokens.clone()
        rows = torch.arange(2)
        changed[rows, order[:, 3]] = (changed[rows, order[:, 3]] + 1) % 16  # the 4th token of each order
        z2 = model.condition(changed, labels, order)
        # slots 0..3 have not seen it (slot t predicts order[t] from order[:t]); slot 4 has
        assert torch.allclose(z[:, :4], z2[:, :4], atol=1e-6)
        assert not torch.allclose(z[:, 4], z2[:, 4], atol=1e-4)
        # same prefix, another next position: the slot's output changes (the model is told where it predicts)
        swapped = order.clone()
        swapped[:, [2, 3]] = order[:, [3, 2]]
        z3 = model.condition(tokens, labels, swapped)
        assert torch.allclose(z[:, :2], z3[:, :2], atol=1e-6)
        assert not torch.allclose(z[:, 2], z3[:, 2], atol=1e-4)


def test_refusals() -> None:
    with pytest.raises(ConfigError, match="valid: 'random', 'raster'"):
        build(order="zigzag")
    with pytest.raises(IncompatibleComponentsError, match="depth 1"):
        build(TokenSpec("discrete", (2, 3), 4, vocab_size=16))
    with pytest.raises(ConfigError, match="steps must be None or 6"):
        build().generate(torch.tensor([0]), SampleSettings(steps=3))
