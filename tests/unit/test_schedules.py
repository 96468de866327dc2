"""The shared schedules of the generators: MAR's mask ratio and masking schedule, the CFG ramp."""

from __future__ import annotations

import pytest
import torch

from benchkit.core.config import CFG_SCHEDULES
from benchkit.core.errors import ConfigError
from benchkit.nn.schedules import (
    cfg_at,
    mask_ratio_truncnorm,
    tokens_to_keep_masked,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mask_ratio_truncnorm_range_and_moments() -> None:
    g = seeded(0)
    r = torch.tensor([mask_ratio_truncnorm(g) for _ in range(4000)])
    assert r.min() >= 0.7 and r.max() <= 1.0
    assert r.mean().item() == pytest.approx(0.867, abs=0.006)  # REFERENCE A 2.5: mean 0.867, sd 0.084
    assert r.std().item() == pytest.approx(0.084, abs=0.006)
    assert mask_ratio_truncnorm(seeded(5)) == mask_ratio_truncnorm(seeded(5))


def _per_step(L: int, K: int) -> list[int]:
    left = [L] + [tokens_to_keep_masked(L, k, K) for k in range(K)]
    return [a - b for a, b in zip(left, left[1:])]


def test_cosine_schedule_counts() -> None:
    assert _per_step(256, 8) == [5, 15, 24, 31, 39, 45, 48, 49]  # MAR's official rule (REFERENCE A 2.6)
    assert _per_step(64, 16) == [1, 1, 1, 2, 3, 3, 4, 4, 5, 5, 5, 6, 6, 6, 6, 6]
    assert _per_step(256, 256) == [1] * 256
    for L in (1, 6, 16, 64):
        for K in range(1, L + 1):
            counts = _per_step(L, K)
            assert sum(counts) == L and min(counts) >= 1, (L, K)


def test_cfg_schedules() -> None:
    assert set(CFG_SCHEDULES) == {"constant", "linear"}
    assert cfg_at(3.0, "constant", 0.1) == 3.0
    assert cfg_at(3.0, "linear", 0.0) == 1.0 and cfg_at(3.0, "linear", 1.0) == 3.0
    assert cfg_at(3.0, "linear", 0.5) == pytest.approx(2.0)
    assert cfg_at(1.0, "linear", 0.3) == 1.0
    with pytest.raises(ConfigError, match="valid: constant, linear"):
        cfg_at(2.0, "cosine", 0.5)
