"""Convergence points: where they fall, that evaluating them leaves training bitwise alone (EMA weights evaluated,
RNG untouched), that a resumed run keeps its earlier points, the still_improving mark and the FLOPs plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from benchkit.core.config import TrainConfig
from benchkit.core.errors import ConfigError, TrainingDivergedError
from benchkit.results.convergence import convergence_series, improving_marks, with_improving
from benchkit.results.plots import fid_vs_train_flops_plot
from benchkit.results.tables import to_markdown
from benchkit.training.convergence import FILE, convergence_steps, read_points, row_fields, store_point

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import Toy, _fit  # noqa: E402

CFG = TrainConfig(steps=40, batch_size=16, lr=0.05, warmup_steps=5, checkpoint_every=10, log_every=5, ema_decay=0.9)


def test_points_double_up_to_the_last_step() -> None:
    assert convergence_steps(350, 4) == [44, 88, 175, 350]
    assert convergence_steps(40, 3) == [10, 20, 40]
    assert convergence_steps(3, 4) == [1, 2, 3] and convergence_steps(40, 0) == []
    with pytest.raises(ValueError, match="points >= 0"):
        convergence_steps(40, -1)


def _greedy_hook(seen: list[tuple[int, torch.Tensor]]):
    """An evaluation that draws random numbers and damages the model it is given, as a careless one might."""

    def evaluate(model: nn.Module, step: int) -> None:
        assert not model.training
        seen.append((step, model.lin.weight.detach().clone()))
        torch.randn(1000)
        with torch.no_grad():
            model.lin.weight.zero_()

    return evaluate


def test_evaluation_leaves_weights_rng_and_log_bitwise_alone(tmp_path: Path) -> None:
    plain, watched = Toy(), Toy()
    _fit(plain, CFG, tmp_path / "plain")
    rng_plain = torch.get_rng_state()
    seen: list[tuple[int, torch.Tensor]] = []
    _fit(watched, CFG, tmp_path / "watched", evaluate_at=[10, 20, 40], evaluate=_greedy_hook(seen))
    assert torch.equal(plain.lin.weight, watched.lin.weight) and torch.equal(plain.lin.bias, watched.lin.bias)
    assert torch.equal(torch.get_rng_state(), rng_plain)
    assert [s for s, _ in seen] == [10, 20, 40]
    # the model evaluated at the last step holds the EMA weights, which fit leaves in the model at the end
    assert torch.equal(seen[-1][1], watched.lin.weight)
    losses = [(tmp_path / d / "log.csv").read_text().split("\n")[-2].split(",")[1] for d in ("plain", "watched")]
    assert losses[0] == losses[1]


def test_resumed_run_keeps_earlier_points(tmp_path: Path) -> None:
    run = tmp_path / "run"

    def evaluate(model: nn.Module, step: int) -> None:
        store_point(run, {"step": step, "train_flops": step * 5.0, "fid": 100.0 / step, "fid_bootstrap_std": 0.1})

    killed = Toy()
    killed.poison_at = 31  # dies at step 31; the checkpoint of step 30 and the points of 10 and 20 stay
    with pytest.raises(TrainingDivergedError):
        _fit(killed, CFG, run, evaluate_at=[10, 20, 40], evaluate=evaluate)
    assert [p["step"] for p in read_points(run)] == [10, 20]
    store_point(run, {"step": 40, "train_flops": 0.0, "fid": -1.0})  # a stale later point is replaced on resume
    _fit(Toy(), CFG, run, resume=True, evaluate_at=[10, 20, 40], evaluate=evaluate)
    points = read_points(run)
    assert [p["step"] for p in points] == [10, 20, 40] and points[-1]["fid"] == pytest.approx(2.5)
    assert json.loads((run / FILE).read_text())["points"] == points
    assert row_fields(run) == {"convergence_fid": 2.5, "convergence_fid_prev": 5.0, "convergence_fid_noise": 0.1}
    assert row_fields(tmp_path / "none") == {}


def test_still_improving_uses_the_larger_noise() -> None:
    df = pd.DataFrame(
        {
            "run": ["a", "a", "b", "c", "d"],
            "fid": [10.0, 12.0, 20.0, 30.0, 40.0],
            "seed_spread_fid": [1.0, None, 5.0, None, None],
            "convergence_fid": [20.0, 20.0, 30.0, 40.0, 50.0],
            "convergence_fid_prev": [22.0, 22.0, 33.0, 44.0, None],
            "convergence_fid_noise": [0.5, 0.5, 1.0, 5.0, 1.0],
        }
    )
    # a: drop 2 > max(spread 1, boot 0.5), on the row without its own spread too; b: drop 3 < spread 5;
    # c: drop 4 < bootstrap 5 (no spread); d: a single point
    assert improving_marks(df).tolist() == ["yes", "yes", "no", "no", None]
    text = to_markdown(with_improving(df))
    assert "still_improving" in text and "convergence_fid_prev" not in text and "| yes" in text
    assert "still_improving" not in with_improving(df.drop(columns=["convergence_fid"])).columns


def test_fid_vs_train_flops_plot_and_series(tmp_path: Path) -> None:
    for run, scale in (("r1", 1.0), ("r2", 3.0)):
        for step in (10, 20, 40):
            store_point(tmp_path / "runs" / run, {"step": step, "train_flops": step * 1e9 * scale, "fid": 500.0 / step})
    df = pd.DataFrame(
        {
            "run": ["r1", "r1", "r2", "tok"],
            "kind": ["generator", "generator", "generator", "tokenizer"],
            "tokenizer": ["vq", "vq", "kl", "vq"],
            "generator": ["ar", "ar", "mar", None],
            "head": ["ce", "ce", "diffloss", None],
        }
    )
    series = convergence_series(df, tmp_path)
    assert series == {  # (flops, mean FID, lowest, highest seed): one seed each here
        "vq+ar+ce": [(1e10, 50.0, 50.0, 50.0), (2e10, 25.0, 25.0, 25.0), (4e10, 12.5, 12.5, 12.5)],
        "kl+mar+diffloss": [(3e10, 50.0, 50.0, 50.0), (6e10, 25.0, 25.0, 25.0), (1.2e11, 12.5, 12.5, 12.5)],
    }
    # two training seeds of one model: one series, the mean and the band between them
    for run, fid in (("s0", 40.0), ("s1", 60.0)):
        for step in (10, 20):
            store_point(tmp_path / "runs" / run, {"step": step, "train_flops": step * 1e9, "fid": fid / step * 10})
    seeds = pd.DataFrame(
        {"run": ["s0", "s1"], "model": ["m", "m"], "tokenizer": "vq", "generator": "mar", "head": "ce"}
    )
    assert convergence_series(seeds, tmp_path) == {"vq+mar+ce": [(1e10, 50.0, 40.0, 60.0), (2e10, 25.0, 20.0, 30.0)]}
    out = tmp_path / "fid_vs_train_flops.png"
    assert fid_vs_train_flops_plot(series, out) == series
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    with pytest.raises(ConfigError, match="convergence_points"):
        fid_vs_train_flops_plot({}, out)
