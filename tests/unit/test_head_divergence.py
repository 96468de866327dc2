"""benchmarks/head_divergence.py: overrides, row reuse, tables and the chain probe, without training anything."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import load_benchmark

from benchkit.core.config import SampleSettings, resolve
from benchkit.core.interfaces import TokenSpec
from benchkit.evaluation.commands import eval_overrides
from benchkit.metrics.health import TokenReference
from benchkit.results.seeds import welch_p


@pytest.fixture(scope="module")
def hd() -> Iterator[ModuleType]:
    yield from load_benchmark("head_divergence")


def args(hd: ModuleType, tmp_path: Path, *extra: str) -> argparse.Namespace:
    a: argparse.Namespace = hd.parse_args(["--out", str(tmp_path), *extra])
    return a


def test_train_overrides_pin_steps_and_set_the_head(hd: ModuleType) -> None:
    for learn_sigma in (False, True):
        for clip in (False, True):
            over = [*hd.train_overrides(996, 2, Path("/tmp/x"), "cpu"), *hd.head_sets(learn_sigma, clip)]
            cfg = resolve("tiny", None, over)
            assert (cfg.train.steps, cfg.train.budget_flops, cfg.train.seeds) == (996, 0.0, 2)
            assert cfg.train.convergence_points == 0
            assert (cfg.generator.name, cfg.head.name, cfg.tokenizer.name) == ("mar", "diffloss", "kl")
            opts = cfg.head.options
            assert opts.get("learn_sigma", False) is learn_sigma and opts.get("clip_x0", True) is clip
    assert hd.head_sets(False, True) == []  # the default head: no options, as the parity script trains it


def test_sampling_overrides_are_what_eval_reads(hd: ModuleType) -> None:
    over = hd.sampling_overrides([(1.0, 0.8), (1.0, 0.0), (3.0, 1.0)], 250, 300, 4000)
    cfg = eval_overrides(resolve("tiny", None, []), over)
    s = cfg.sample
    assert (s.steps, s.diffusion_steps, s.cfg, s.temperature, s.cfg_schedule) == (16, 250, 1.0, 0.8, "constant")
    assert [(e["cfg"], e["temperature"]) for e in cfg.eval.sweep] == [(1.0, 0.0), (3.0, 1.0)]
    assert (cfg.eval.num_samples, cfg.eval.num_reference, cfg.eval.tune) == (300, 4000, [])
    single = eval_overrides(resolve("tiny", None, []), hd.sampling_overrides([(3.0, 0.8)], 50, 10, 20))
    assert single.eval.sweep == [] and single.sample.cfg == 3.0
    with pytest.raises(ValueError):
        hd.sampling_overrides([], 50, 10, 20)


def test_row_key_and_measure(hd: ModuleType) -> None:
    row = {"run": "r1", "cfg": 3, "temperature": 0.0, "diffusion_steps": 100, "n_samples": 500, "n_ref": 5000}
    assert hd.row_key(row) == ("r1", 3.0, 0.0, 100, 500, 5000)
    m = hd.measure({**row, "fid": 12.5, "health": "ok", "token_std_ratio_max": 0.9}, seed=2)
    assert (m.seed, m.fid, m.health, m.std_ratio) == (2, 12.5, "ok", 0.9) and math.isnan(m.out_of_range)


def test_format_table_values(hd: ModuleType) -> None:
    M = hd.Measure
    cells = {
        ("a", "CFG 1, T 1.0, 50 steps"): [M(0, 10.0, "ok", 0.9, 0.0), M(1, 20.0, "ok", 1.1, 0.02)],
        ("b", "CFG 1, T 1.0, 50 steps"): [M(0, 3000.0, "diverged", 4680.0, 0.99), M(2, 5000.0, "diverged", 2e4, 1.0)],
    }
    lines = hd.format_table("head", cells).splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["head", "sampling", "FID s0", "FID s1", "FID s2"]
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(first) == len(header) and first[2:5] == ["10.0", "20.0", "-"]
    assert first[5] == "15.0" and first[6].startswith("±") and first[7] == "-"  # the reference row: no p-value
    assert first[8] == "0.90 / 1.10" and first[9] == "1.0%" and first[10] == "ok"
    second = [c.strip() for c in lines[3].strip("|").split("|")]
    assert second[5] == "4000.0" and second[8] == "4680.00 / 2e+04" and second[-1] == "diverged 2/2"
    assert float(second[7]) == pytest.approx(welch_p([3000.0, 5000.0], [10.0, 20.0]), abs=1e-3)


def test_shown_steps(hd: ModuleType) -> None:
    steps = hd.shown_steps(50)
    assert steps[:8] == list(range(49, 41, -1)) and steps[-1] == 0
    assert all(a > b for a, b in zip(steps, steps[1:]))
    assert hd.shown_steps(3) == [2, 1, 0]


def test_chain_stats_measure_the_first_step_amplification(hd: ModuleType) -> None:
    from benchkit.nn.diffusion import GaussianDiffusion

    chain = GaussianDiffusion.cosine(1000).respace(50)
    g = torch.Generator().manual_seed(0)
    std = torch.tensor([0.5, 2.0], dtype=torch.float64)
    stats = hd.ChainStats(chain, std, std**2)
    x0 = torch.randn(20000, 2, generator=g) * std.float()
    noise = torch.randn(20000, 2, generator=g)
    for i in (49, 25, 0):  # exact noise: x_t has the forward process's std, the predicted x_0 the data's
        x_t = chain.q_sample(x0, torch.full((len(x0),), i), noise)
        stats.add_step(i, x_t, noise)
        assert stats.xt[i][0] == pytest.approx(1.0, abs=0.03) and stats.x0[i][0] == pytest.approx(1.0, abs=0.03)
    x_t = chain.q_sample(x0, torch.full((len(x0),), 49), noise)
    stats.add_step(49, x_t, noise + 0.01 * torch.randn(20000, 2, generator=g))  # noise off by 0.01 at t = 999
    expected = 0.01 / math.sqrt(float(chain.alphas_cumprod[49])) / 0.5  # ~400x the std of channel 0
    assert stats.x0[49][1] == pytest.approx(expected, rel=0.05) and expected > 300
    stats.add_tokens(torch.zeros(5, 2))
    stats.add_tokens(torch.zeros(1, 2))  # one row: no std, not recorded
    assert stats.mar == [pytest.approx(0.0)]
    fig = stats.figures()
    assert set(fig["x0_pred"]) == {999, 0, int(chain.timesteps[25])} and fig["mar_tokens"] == stats.mar


def test_chain_profile_hooks_every_step(hd: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchkit.heads.diffloss import DiffLossConfig, DiffLossHead

    torch.manual_seed(0)
    head = DiffLossHead(
        DiffLossConfig(learn_sigma=True, clip_x0=False), spec=TokenSpec("continuous", (2, 2), dim=3), cond_dim=8
    )
    head.x0_bound.fill_(1.0)
    seen: list[bool] = []

    class Gen:
        num_classes = 4

        def __init__(self) -> None:
            self.head = head

        def generate(self, labels: torch.Tensor, settings: SampleSettings, generator: torch.Generator) -> None:
            seen.append(self.head.cfg.clip_x0)
            for _ in range(3):  # three MAR steps
                cond = torch.randn(len(labels), 8, generator=generator)
                self.head.sample(cond, temperature=settings.temperature, diffusion_steps=settings.diffusion_steps)

    ref = TokenReference("continuous", 10, (2, 2, 3), std=torch.ones(3, dtype=torch.float64))
    run = SimpleNamespace(generator=Gen(), token_reference=lambda: ref)
    monkeypatch.setattr("benchkit.training.loading.load_run", lambda path: run)
    settings = SampleSettings(steps=16, temperature=1.0, diffusion_steps=10)
    stats = hd.chain_profile(Path("unused"), settings, samples=6, clip=True)
    assert seen == [True] and head.cfg.clip_x0 is True
    assert sorted(stats.xt) == list(range(10)) and all(len(v) == 3 for v in stats.xt.values())
    assert len(stats.mar) == 3 and all(r >= 0 for r in stats.mar)
    table = hd.chain_table({"p": stats}).splitlines()
    assert table[2].startswith("| 9 (999) |") and table[-1].startswith("| final tokens")


def test_evaluate_reuses_stored_rows(hd: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = args(hd, tmp_path, "--samples", "500", "--reference", "5000")
    a.results.mkdir(parents=True)
    base = {"kind": "generator", "run": "runA", "diffusion_steps": 50, "n_samples": 500, "n_ref": 5000}
    rows = [{**base, "cfg": 1.0, "temperature": 1.0, "fid": 1.0}, {**base, "cfg": 3.0, "temperature": 0.8, "fid": 2.0}]
    (a.results / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls: list[list[str]] = []

    def fake(argv: list[str], overrides: list[str], threads: Any) -> list[dict[str, Any]]:
        calls.append([*argv, *overrides])
        return [{**base, "cfg": 1.0, "temperature": 0.0, "fid": 3.0}]

    monkeypatch.setattr(hd, "benchkit", fake)
    got = hd.evaluate(Path("/x/runA"), [(1.0, 1.0), (3.0, 0.8)], 50, a)
    assert calls == [] and {k: r["fid"] for k, r in got.items()} == {(1.0, 1.0): 1.0, (3.0, 0.8): 2.0}
    got = hd.evaluate(Path("/x/runA"), [(1.0, 1.0), (1.0, 0.0)], 50, a)
    assert len(calls) == 1 and calls[0][:2] == ["eval", "/x/runA"] and "sample.temperature=1.0" in calls[0]
    assert {k: r["fid"] for k, r in got.items()} == {(1.0, 1.0): 1.0, (1.0, 0.0): 3.0}


def test_parse_args(hd: ModuleType, tmp_path: Path) -> None:
    a = args(hd, tmp_path, "--factors", "steps, chain")
    assert a.factors == ["steps", "chain"] and a.results == tmp_path / "results" and a.steps == 498
    with pytest.raises(SystemExit):
        args(hd, tmp_path, "--factors", "steps,bogus")
    with pytest.raises(SystemExit):
        args(hd, tmp_path, "--samples", "1")
