"""benchmarks/optimizer_step.py and metric_costs.py: what they time computes what the default run computes."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest
from conftest import load_benchmark

from benchkit.metrics.quality import cleanfid_kid


@pytest.fixture(scope="module")
def opt() -> Iterator[ModuleType]:
    yield from load_benchmark("optimizer_step")


@pytest.fixture(scope="module")
def met() -> Iterator[ModuleType]:
    yield from load_benchmark("metric_costs")


def test_optimizer_step_times_both_paths_of_a_default_run_model(opt: ModuleType) -> None:
    models = opt._jobs(["ar+ce"])
    assert [name for name, _ in models] == ["ar+ce"]
    for fused in (False, True):
        fwd, upd, tensors = opt._step_ms(models[0][1], fused, 1)
        assert fwd > 0 and upd > 0 and tensors > 10


def test_kid_in_float64_and_float32_agree_and_a_row_compares_two_calls(met: ModuleType) -> None:
    rng = np.random.default_rng(0)
    fake, ref = rng.standard_normal((60, 16)) + 0.3, rng.standard_normal((300, 16))
    old = cleanfid_kid(fake, ref, 60, 0, dtype=np.float64)
    assert old > 0
    assert cleanfid_kid(fake, ref, 60, 0) == pytest.approx(old, rel=1e-4)
    row = met._row("x", lambda: 2.0, lambda: 2.0, 1)
    assert row.startswith("| x |") and row.endswith("| 0.0e+00 |")
