"""The locality diagnostic (gradient influence by grid distance) on small random-weight ar and mar models."""

from __future__ import annotations

import pytest
import torch

from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.metrics.locality import influence_by_distance

SPEC = TokenSpec("continuous", (4, 5), 1, dim=3)
HEAD = {"width": 16, "depth": 1, "batch_mul": 1}


def _model(name: str, **options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    small = {
        "ar": {"width": 32, "depth": 2, "num_heads": 2},
        "mar": {"width": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "buffer_size": 2},
    }[name]
    return GENERATORS.create(
        name, spec=SPEC, head="diffloss", head_options=HEAD, num_classes=3, **{**small, **options}
    ).eval()


def _tokens(B: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 4, 5, 3, generator=g), torch.tensor([0, 2][:B])


def test_ar_profile_equals_the_mean_gradient_norm_per_distance() -> None:
    model = _model("ar")
    tokens, labels = _tokens(1)
    prof = influence_by_distance(model, tokens, labels, queries=1)
    # by hand: query = grid centre (row 2, col 2) = position 12; visible = positions 0..11
    x = tokens.reshape(1, 20, 3).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.forward(x, labels)[0, 12].pow(2).sum(), x)
    by_d: dict[int, list[float]] = {}
    for q in range(12):
        by_d.setdefault(max(abs(q // 5 - 2), abs(q % 5 - 2)), []).append(float(grad[0, q].norm()))
    assert sorted(prof) == sorted(by_d) == [1, 2]
    for d, vals in by_d.items():
        assert prof[d] == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    # causality: the query's own and later tokens have no influence (so they are rightly left out)
    assert float(grad[0, 12:].abs().max()) == 0.0


def test_mar_profile_is_seeded_and_unknown_tokens_have_no_influence() -> None:
    model = _model("mar")
    tokens, labels = _tokens()
    a = influence_by_distance(model, tokens, labels, n_masked=10, seed=3)
    b = influence_by_distance(model, tokens, labels, n_masked=10, seed=3)
    assert a == b and min(a) >= 1 and all(v > 0 for v in a.values())
    # the values at unknown positions must not reach any condition vector
    order = torch.argsort(torch.rand(2, 20, generator=torch.Generator().manual_seed(3)), dim=1)
    x = tokens.reshape(2, 20, 3).clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.condition(x, labels, order, 10).pow(2).sum(), x)
    unknown = grad.gather(1, order[:, :10, None].expand(-1, -1, 3))
    known = grad.gather(1, order[:, 10:, None].expand(-1, -1, 3))
    assert float(unknown.abs().max()) == 0.0 and float(known.abs().max()) > 0.0


def test_bad_inputs_are_refused_with_the_valid_choices() -> None:
    tokens, labels = _tokens()
    rq = GENERATORS.create(
        "rqtransformer",
        spec=TokenSpec("continuous", (2, 2), 2, dim=3),
        head="diffloss",
        head_options=HEAD,
        num_classes=3,
        width=32,
        spatial_depth=1,
        depth_depth=1,
        num_heads=2,
    )
    with pytest.raises(ConfigError, match="ar, mar"):
        influence_by_distance(rq, tokens, labels)
    with pytest.raises(ConfigError, match="continuous tokens"):
        influence_by_distance(_model("ar"), tokens.long(), labels)
    with pytest.raises(ConfigError, match=r"n_masked must be in \[3, 19\]"):
        influence_by_distance(_model("mar"), tokens, labels, n_masked=20)
