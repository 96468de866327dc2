"""Counted training FLOPs: positive, proportional to the batch, unchanged model state and RNG."""

from __future__ import annotations

import pytest
import torch

from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.training.compute import train_step_flops

SPEC = TokenSpec("discrete", (4, 4), 1, vocab_size=16)


def build(name: str, **options: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return GENERATORS.create(name, spec=SPEC, head="ce", num_classes=3, width=32, num_heads=2, **options)


def test_train_flops_scale_with_batch_and_depth_and_leave_state_alone() -> None:
    model = build("ar", depth=2).eval()
    before = torch.random.get_rng_state()
    f8 = train_step_flops(model, SPEC, 8, 3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert f8 > 0 and train_step_flops(model, SPEC, 16, 3) == 2 * f8  # counted at 8, scaled
    f4 = train_step_flops(model, SPEC, 4, 3)
    assert f8 == pytest.approx(2 * f4, rel=0.02)  # counted at 4 and at 8: linear in the batch
    assert train_step_flops(build("ar", depth=4), SPEC, 8, 3) > 1.5 * f8  # the transformer dominates
    mar = build("mar", encoder_depth=1, decoder_depth=1, buffer_size=2)
    assert train_step_flops(mar, SPEC, 8, 3, draws=3, seed=1) == train_step_flops(mar, SPEC, 8, 3, draws=3, seed=1)
    with pytest.raises(ConfigError, match="must be >= 1"):
        train_step_flops(model, SPEC, 0, 3)
