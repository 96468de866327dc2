"""``benchkit plan``: meta-device counts equal real CPU counts; the memory and GPU-hour arithmetic."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from benchkit.cli import app
from benchkit.core.config import resolve
from benchkit.core.errors import ConfigError
from benchkit.metrics.cost import count_params, flops_per_call
from benchkit.training.artifacts import build_generator
from benchkit.training.checks import check
from benchkit.training.plan import GPU_PEAKS, _meta_batch, make_plan


def test_meta_flops_equal_a_real_cpu_step() -> None:
    cfg = resolve("tiny")
    p = make_plan(cfg, gpus=4, utilisation=0.5, num_classes=10)
    combo = check(cfg, include_eval=False)
    torch.manual_seed(0)
    gen = build_generator(cfg, combo, 10, torch.device("cpu")).train()
    batch = _meta_batch(combo.spec, torch.float32)
    batch = type(batch)(torch.zeros(batch.tokens.shape, dtype=torch.long), torch.zeros(1, dtype=torch.long))

    def step() -> None:
        gen.loss(batch).loss.backward()

    assert p.generator_params == count_params(gen)
    # equal up to attention: meta runs the math kernel, the CPU its flash kernel, each counted by its own formula
    assert p.flops_per_image == pytest.approx(flops_per_call(step), rel=0.02)
    total = p.flops_per_image * cfg.train.steps * cfg.train.batch_size
    assert p.gpu_hours["H100"] == pytest.approx(total / (GPU_PEAKS["H100"] * 0.5) / 3600)
    assert p.per_gpu_batch == cfg.train.batch_size // 4
    assert 0 < p.checkpointed_activation_bytes_per_image < p.activation_bytes_per_image
    ema_state = p.generator_params * 20
    assert p.memory_gb(False) == pytest.approx((ema_state + p.activation_bytes_per_image * p.per_gpu_batch) / 1e9)


def test_plan_command_and_bad_inputs() -> None:
    res = CliRunner().invoke(app, ["plan", "tiny", "--gpus", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["name"] == "tiny" and out["gpus"] == 2 and out["memory_gb_checkpointed"] < out["memory_gb"]
    with pytest.raises(ConfigError, match="--gpus must divide train.batch_size 64, got 3"):
        make_plan(resolve("tiny"), gpus=3)
    with pytest.raises(ConfigError, match="utilisation must be in"):
        make_plan(resolve("tiny"), gpus=1, utilisation=1.5)


@pytest.mark.parametrize("budget", ["budget_flops", "budget_images"])
def test_plan_takes_its_steps_from_a_training_budget(budget: str) -> None:
    base = make_plan(resolve("tiny"), gpus=1, num_classes=10)
    step_flops = base.flops_per_image * base.batch_size
    value = f"{7.5 * step_flops:.6e}" if budget == "budget_flops" else str(7 * base.batch_size + 5)
    p = make_plan(resolve("tiny", overrides=[f"train.{budget}={value}"]), gpus=1, num_classes=10)
    assert p.steps == 7 != base.steps  # whole steps, rounded down; train.steps is not used
    assert p.gpu_hours["A100"] == pytest.approx(base.gpu_hours["A100"] * 7 / base.steps)
    out = CliRunner().invoke(app, ["plan", "--gpus", "1", "--num-classes", "10", "--set", f"train.{budget}={value}"])
    assert out.exit_code == 0, out.output
    assert f"from train.{budget}" in out.output and "7 x 64" in out.output
