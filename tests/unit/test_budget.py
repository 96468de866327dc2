"""Equal compute: a training budget in FLOPs or images sets each generator's steps from its counted cost."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchkit.core.config import TrainConfig, resolve
from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.training.checks import check
from benchkit.training.compute import apply_budget, budget_steps, config_step_flops

SPEC = TokenSpec("discrete", (4, 4), 1, vocab_size=16)


def _cfg_and_model(name: str, sets: list[str], **options: int):
    cfg = resolve("tiny", None, [f"generator.name={name}", "head.name=ce", "train.batch_size=8", *sets])
    torch.manual_seed(0)
    model = GENERATORS.create(name, spec=SPEC, head="ce", num_classes=3, width=32, num_heads=2, **options)
    return cfg, model


def test_flops_budget_gives_cheaper_generators_more_steps_at_equal_compute() -> None:
    budget = 4e9
    sets = [f"train.budget_flops={budget}", "train.steps=7"]
    runs = [_cfg_and_model("ar", sets, depth=1), _cfg_and_model("mar", sets, encoder_depth=2, decoder_depth=2)]
    before = torch.random.get_rng_state()
    derived = [apply_budget(cfg, model, SPEC) for cfg, model in runs]
    assert torch.equal(torch.random.get_rng_state(), before)
    per_step = [config_step_flops(cfg, model, SPEC) for cfg, model in runs]
    steps = [d.train.steps for d in derived]
    assert per_step[1] > 1.5 * per_step[0] and steps[0] > steps[1] > 7  # the budget, not train.steps, drives
    spent = [s * f for s, f in zip(steps, per_step)]
    assert all(budget - f < s <= budget for s, f in zip(spent, per_step))  # each within one step of the budget
    assert abs(spent[0] - spent[1]) < max(per_step)
    assert derived[0].train.budget_flops == budget and derived[0].generator == runs[0][0].generator


def test_image_budget_and_no_budget() -> None:
    cfg, model = _cfg_and_model("ar", ["train.budget_images=1000"], depth=1)
    assert apply_budget(cfg, model, SPEC).train.steps == 125  # 1000 images at batch 8
    plain, _ = _cfg_and_model("ar", ["train.steps=7"], depth=1)
    assert apply_budget(plain, model, SPEC) is plain


def test_budget_errors_are_one_clear_line() -> None:
    with pytest.raises(ConfigError, match="set one training budget, budget_flops or budget_images, not both"):
        resolve("tiny", None, ["train.budget_flops=1e12", "train.budget_images=100"])
    with pytest.raises(ConfigError, match="must be >= 0"):
        resolve("tiny", None, ["train.budget_images=-1"])
    with pytest.raises(ConfigError, match=r"less than one step \(1000 FLOPs at batch 8\)"):
        budget_steps(TrainConfig(batch_size=8, budget_flops=10.0), 1000)
    with pytest.raises(ConfigError, match="less than one batch"):
        budget_steps(TrainConfig(batch_size=8, budget_images=7), 1000)
    with pytest.raises(ConfigError, match="apply to generators"):
        check(resolve("tiny", None, ["tokenizer_train.budget_flops=1e12"]))


def test_shipped_budget_sweep_is_tiny_at_equal_flops_and_long_has_convergence_points() -> None:
    from benchkit.sweeps.sweepfile import expand, load_sweep
    from benchkit.training.artifacts import run_fingerprint

    budget, tiny = expand(load_sweep("budget")), expand(load_sweep("tiny"))
    assert len(budget) == 7 and all(j.cfg is not None for j in budget)
    assert {(j.cfg.train.budget_flops, j.cfg.train.convergence_points) for j in budget} == {(4.5e12, 4)}
    triples = [(j.cfg.tokenizer.name, j.cfg.generator.name, j.cfg.head.name) for j in budget + tiny]
    assert set(triples[7:]) < set(triples[:7])  # the default sweep's models, plus the rows it cuts for time
    long = expand(load_sweep("long"))
    assert {(j.cfg.train.convergence_points, j.cfg.train.convergence_samples) for j in long} == {(5, 200)}
    # convergence points leave the run's identity alone: adding them to a sweep reuses its trained runs
    cfgs = [j.cfg for j in long if j.cfg]
    without = [replace(c, train=replace(c.train, convergence_points=0)) for c in cfgs]
    assert [run_fingerprint(c) for c in cfgs] == [run_fingerprint(c) for c in without]


def test_every_training_seed_of_mar_gets_the_same_steps() -> None:
    """MAR's mask ratio is drawn, so its counted step cost depends on the draws; the count uses the model's first
    seed, so all of a model's training seeds train the same steps (and share one base run directory)."""
    from benchkit.training.artifacts import seed_configs

    base, model = _cfg_and_model("mar", ["train.budget_flops=4e9", "train.seeds=3"], encoder_depth=2, decoder_depth=2)
    steps = [apply_budget(c, model, SPEC).train.steps for c in seed_configs(base)]
    assert len(set(steps)) == 1 and steps[0] > 7
    other, _ = _cfg_and_model("mar", ["train.budget_flops=4e9", "seed=5"], encoder_depth=2, decoder_depth=2)
    assert config_step_flops(other, model, SPEC) != config_step_flops(base, model, SPEC)  # the draws did matter
