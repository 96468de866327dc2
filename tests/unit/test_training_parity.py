"""benchmarks/training_parity.py: its own logic (recipe, step count, official arguments, table, verdict, errors),
without the official code."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from conftest import load_benchmark

from benchkit.core.config import RunConfig, resolve
from benchkit.evaluation.commands import eval_overrides
from benchkit.importers import mar as mar_importer
from benchkit.training.checks import check


@pytest.fixture(scope="module")
def tp() -> Iterator[ModuleType]:
    yield from load_benchmark("training_parity")


def pinned(tp: ModuleType, steps: int = 123, seeds: int = 2) -> RunConfig:
    return resolve("tiny", None, tp.pinned_overrides(tp.base_overrides(), steps, seeds, Path("/tmp/parity"), "cpu"))


def test_default_budget_is_the_default_runs(tp: ModuleType, tmp_path: Path) -> None:
    budget = tp.default_budget()
    assert budget > 0
    assert resolve("tiny", None, tp.base_overrides()).train.budget_flops == budget  # the sweep file's own value
    (tmp_path / "b.toml").write_text('preset = "tiny"\nset = ["train.budget_flops=1.5e12", "train.lr=1e-3"]\n')
    assert tp.default_budget(tmp_path / "b.toml") == 1.5e12
    (tmp_path / "none.toml").write_text('preset = "tiny"\nset = ["train.lr=1e-3"]\n')
    with pytest.raises(tp.ParityError, match="sets no train.budget_flops"):
        tp.default_budget(tmp_path / "none.toml")


def test_base_overrides_are_the_default_runs_mar_diffloss_job(tp: ModuleType) -> None:
    base = tp.base_overrides()
    for item in ('tokenizer.name="kl"', 'generator.name="mar"', 'head.name="diffloss"', "train.lr=4e-3"):
        assert item in base
    cfg = resolve("tiny", None, base)
    assert (cfg.generator.options["width"], cfg.train.batch_size, cfg.train.lr) == (64, 32, 4e-3)


def test_recipe_of_the_pinned_config(tp: ModuleType) -> None:
    cfg = pinned(tp)
    assert tp.recipe_of(cfg) == {
        "steps": 123,
        "batch_size": 32,
        "lr": 4e-3,
        "warmup_steps": 50,
        "schedule": "cosine",
        "weight_decay": 0.0,
        "grad_clip": 1.0,
        "ema_decay": 0.99,
        "betas": (0.9, 0.95),
    }
    assert (cfg.train.budget_flops, cfg.train.convergence_points, cfg.train.seeds) == (0.0, 0, 2)
    assert cfg.out_dir == "/tmp/parity" and cfg.device == "cpu"


def test_steps_from_the_budget_are_benchkits(tp: ModuleType) -> None:
    cfg = resolve("tiny", None, [*tp.base_overrides(), "train.budget_flops=4.5e12"])
    steps = tp.derive_steps(cfg, 10)
    assert steps == 996  # benchkit's kl + mar + diffloss trains 996 steps at 4.5e12 FLOPs (the single-seed default)
    half = resolve("tiny", None, [*tp.base_overrides(), "train.budget_flops=2.25e12"])
    assert tp.derive_steps(half, 10) in (steps // 2, steps // 2 - 1)


def test_official_args_are_the_default_runs_shape(tp: ModuleType) -> None:
    cfg = pinned(tp)
    spec = check(cfg).spec
    args = tp.official_args(cfg, tuple(spec.grid), int(spec.dim), 10)
    assert args == {
        "img_size": 32,
        "vae_stride": 4,
        "patch_size": 1,
        "vae_embed_dim": 4,
        "encoder_embed_dim": 64,
        "decoder_embed_dim": 64,
        "encoder_num_heads": 4,
        "decoder_num_heads": 4,
        "encoder_depth": 2,
        "decoder_depth": 2,
        "mlp_ratio": 4.0,
        "mask_ratio_min": 0.7,
        "label_drop_prob": 0.1,
        "class_num": 10,
        "attn_dropout": 0.0,
        "proj_dropout": 0.0,
        "buffer_size": 8,
        "diffloss_d": 2,
        "diffloss_w": 64,
        "num_sampling_steps": "50",
        "diffusion_batch_mul": 4,
    }
    with pytest.raises(tp.ParityError, match="square token grid"):
        tp.official_args(cfg, (8, 4), 4, 10)


def test_official_args_import_as_benchkits_model_with_marss_head(tp: ModuleType) -> None:
    cfg = pinned(tp)
    spec = check(cfg).spec
    args = tp.official_args(cfg, tuple(spec.grid), int(spec.dim), 10)
    gen, head = mar_importer.component_options({**mar_importer._COMMON, **args})
    assert {k: gen[k] for k in ("width", "encoder_depth", "decoder_depth", "num_heads", "buffer_size")} == {
        "width": 64,
        "encoder_depth": 2,
        "decoder_depth": 2,
        "num_heads": 4,
        "buffer_size": 8,
    }
    assert (gen["dropout"], gen["label_drop"], gen["mask_ratio_min"]) == (0.0, 0.1, 0.7)
    assert head == {
        "width": 64,
        "depth": 2,
        "batch_mul": 4,
        "sampling_steps": 50,
        "learn_sigma": True,
        "clip_x0": False,
    }
    assert args["img_size"] // args["vae_stride"] == spec.grid[0]  # the importer's token-grid check


def test_eval_overrides_are_the_two_settings_without_tuning(tp: ModuleType) -> None:
    cfg = eval_overrides(pinned(tp), tp.eval_overrides(100, 300))
    s = cfg.sample
    assert (s.steps, s.diffusion_steps, s.cfg, s.temperature, s.cfg_schedule) == (16, 50, 1.0, 1.0, "constant")
    assert cfg.eval.sweep == [{"cfg": 3.0, "temperature": 0.8}]
    assert cfg.eval.tune == [] and cfg.eval.seed_spread is False
    assert (cfg.eval.num_samples, cfg.eval.num_reference) == (100, 300)


def test_rows_to_results_keeps_the_two_settings(tp: ModuleType) -> None:
    rows = [
        {"cfg": 1.0, "temperature": 1.0, "fid": 812.8, "health": "ok"},
        {"cfg": 3.0, "temperature": 0.8, "fid": 445.3, "health": "diverged"},
        {"cfg": 5.0, "temperature": 0.8, "fid": 1.0, "health": "ok"},
        {"cfg": 3.0, "temperature": 1.0, "fid": None},
    ]
    out = tp.rows_to_results(rows, 7)
    assert out == {
        "CFG 1, T 1.0": tp.SeedFid(7, 812.8, "ok"),
        "CFG 3, T 0.8": tp.SeedFid(7, 445.3, "diverged"),
    }


def test_health_mark(tp: ModuleType) -> None:
    assert tp.health_mark(["ok", "ok", "ok"]) == "ok"
    assert tp.health_mark(["ok", "diverged", "diverged"]) == "diverged 2/3"
    assert tp.health_mark(["collapsed", "ok"]) == "collapsed 1/2"
    assert tp.health_mark([None, None]) == "-"


def test_verdict(tp: ModuleType) -> None:
    official = [2712.0, 2650.0, 2800.0]
    within = tp.verdict(official, [2700.0, 2760.0, 2640.0])
    assert within.startswith("benchkit within the official model's interval (Welch p = ")
    better = tp.verdict(official, [812.8, 800.0, 830.0])
    assert better.startswith("benchkit NOT within the official model's interval: its FID is lower (better)")
    worse = tp.verdict([10.0, 11.0, 12.0], [30.0, 31.0, 33.0])
    assert "higher (worse)" in worse
    assert tp.verdict([10.0], [11.0]).startswith("not judged")
    assert tp.verdict([10.0, math.inf, 12.0], [10.5, 11.5]).startswith("benchkit within")  # inf is left out


def test_format_table_on_known_inputs(tp: ModuleType) -> None:
    one, three = "CFG 1, T 1.0", "CFG 3, T 0.8"
    results = {
        "official": {
            one: [tp.SeedFid(0, 10.0, "ok"), tp.SeedFid(1, 12.0, "ok"), tp.SeedFid(2, 14.0, "ok")],
            three: [tp.SeedFid(0, 3000.0, "diverged"), tp.SeedFid(1, 3100.0, "diverged"), tp.SeedFid(2, 3200.0)],
        },
        "default": {one: [tp.SeedFid(0, 11.0, "ok"), tp.SeedFid(1, 12.0, "ok"), tp.SeedFid(2, 13.0, "ok")]},
    }
    table, verdicts = tp.format_table(results)
    lines = table.splitlines()
    assert lines[0] == "| model | sampling | FID seed 0 | FID seed 1 | FID seed 2 | mean | 95% CI | health |"
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---|"
    assert len(lines) == 2 + 2 * 3  # 3 models x 2 settings
    # mean 12, sd 2, t(0.975, 2) = 4.303: half-width 4.303 * 2 / sqrt(3) = 4.97
    assert lines[2] == f"| {tp.VARIANTS['official']} | {one} | 10.0 | 12.0 | 14.0 | 12.0 | ±5.0 | ok |"
    assert lines[3] == f"| {tp.VARIANTS['default']} | {one} | 11.0 | 12.0 | 13.0 | 12.0 | ±2.5 | ok |"
    assert lines[4] == f"| {tp.VARIANTS['mar_head']} | {one} | - | - | - | - | - | - |"
    assert lines[5].endswith("| 3000.0 | 3100.0 | 3200.0 | 3100.0 | ±248.4 | diverged 2/3 |")
    assert len(verdicts) == 4
    assert verdicts[0].startswith(f"{one}, {tp.VARIANTS['default']}: benchkit within the official model's interval")
    assert verdicts[1] == f"{one}, {tp.VARIANTS['mar_head']}: " + tp.verdict([10.0, 12.0, 14.0], [])
    assert "not judged" in verdicts[1]


def test_missing_mar_code_is_one_line(tp: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tp.main(["--mar-code", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: --mar-code {str(tmp_path)!r} holds no models/mar.py; pass a checkout of github.com/LTH14/mar"
    )
    assert not (tmp_path / "out").exists()  # nothing was trained


def test_check_code_accepts_a_checkout(tp: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mar.py").write_text("")
    assert tp.check_code(tmp_path, "models/mar.py", "LTH14/mar", "--mar-code") == tmp_path.resolve()


def test_bad_counts_are_refused(tp: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        tp.parse_args(["--mar-code", ".", "--samples", "1"])
    assert e.value.code == 2
    assert "--samples must be >= 2, got 1" in capsys.readouterr().err
    a = tp.parse_args(["--mar-code", "x"])
    assert (a.seeds, a.samples, a.reference, a.steps, a.budget_flops) == (3, 1000, 5000, None, None)


def test_cuda_calls_stay_on_the_cpu(tp: ModuleType) -> None:
    original = torch.Tensor.cuda
    with tp.cuda_calls_on(torch.device("cpu")):
        moved = torch.ones(3).cuda()
        assert moved.device.type == "cpu" and moved.tolist() == [1.0, 1.0, 1.0]
    assert torch.Tensor.cuda is original


def test_finish_evaluates_in_table_order_and_assembles_the_record(
    tp: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = tp.parity_common
    a = tp.parse_args(["--mar-code", str(tmp_path), "--seeds", "2", "--steps", "7", "--out", str(tmp_path / "out")])
    cfg = pinned(tp, steps=7, seeds=2)
    plan = common.Plan(1.0e12, 7, [], cfg)
    runs = {v: [tmp_path / f"{v}-{i}" for i in range(2)] for v in ("mar_head", "default", "official")}
    seen: list[tuple[list[str], list[int], Path]] = []

    def fake_eval(
        runs_: dict[str, list[Path]],
        seeds: list[int],
        sets: list[str],
        results_dir: Path,
        flags: list[str],
        settings: Any,
    ) -> dict[str, dict[str, list[Any]]]:
        seen.append((list(runs_), list(seeds), results_dir))
        label = common.setting_label(*settings[0])
        return {v: {label: [tp.SeedFid(s, 10.0 + s, "ok") for s in seeds]} for v in runs_}

    monkeypatch.setattr(common, "evaluate_runs", fake_eval)
    record = common.finish(a, plan, runs, ["x=1"], [], tp.VARIANTS, tp.SETTINGS, mar_code="CODE")
    assert seen == [(list(tp.VARIANTS), [c.seed for c in common.seed_configs(cfg)], (tmp_path / "out" / "results"))]
    assert list(record["runs"]) == list(tp.VARIANTS)  # the table's order, not the order trained
    assert record["runs"]["default"] == [str(tmp_path / "default-0"), str(tmp_path / "default-1")]
    assert (record["seeds"], record["steps"], record["budget_flops"], record["mar_code"]) == (2, 7, 1.0e12, "CODE")
    assert record["recipe"]["steps"] == 7
    assert record["fids"]["official"]["CFG 1, T 1.0"][1]["fid"] == 11.0
    assert record["table"].splitlines()[2].startswith(f"| {tp.VARIANTS['official']} | CFG 1, T 1.0 | 10.0 | 11.0 |")
    assert len(record["verdicts"]) == 4
