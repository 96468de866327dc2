"""The shared training loop: determinism, exact resume, EMA, NaN detection, checkpoint safety, CSV log."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from benchkit.core.checkpoint import load_checkpoint, save_checkpoint
from benchkit.core.config import TrainConfig
from benchkit.core.errors import CheckpointError, TrainingDivergedError
from benchkit.core.interfaces import LossOutput
from benchkit.training.trainer import batch_indices, fit, lr_factor

X = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(8, 1, generator=torch.Generator().manual_seed(1))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 1)
        self.poison_at: int | None = None
        self.calls = 0

    def loss(self, idx: torch.Tensor) -> LossOutput:
        self.calls += 1
        noise = torch.randn(len(idx), 1) * 0.01  # the loss's own randomness: resumed via the RNG state
        loss = ((self.lin(X[idx]) - Y[idx] - noise) ** 2).mean()
        if self.poison_at is not None and self.calls >= self.poison_at:
            loss = loss * float("nan")
        return LossOutput(loss, {"mse": float(loss.detach())})


def _fit(model: Toy, cfg: TrainConfig, d: Path, **kw) -> object:
    torch.manual_seed(0)
    return fit(
        model,
        lambda m, b: m.loss(b),
        lambda idx: idx,
        len(X),
        cfg,
        d,
        seed=3,
        fingerprint="fp",
        show_progress=False,
        **kw,
    )


def test_batches_are_a_function_of_seed_and_step() -> None:
    a = batch_indices(100, 32, 5, seed=1)
    assert torch.equal(a, batch_indices(100, 32, 5, seed=1)) and len(a) == 32 and len(set(a.tolist())) == 32
    assert not torch.equal(a, batch_indices(100, 32, 5, seed=2))
    epoch0 = torch.cat([batch_indices(100, 25, s, seed=1) for s in range(4)])
    assert sorted(epoch0.tolist()) == list(range(100))  # one epoch visits each item once


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(99, cfg) < 0.01
    assert lr_factor(50, TrainConfig(steps=100, warmup_steps=10, schedule="constant")) == 1.0


def test_same_seed_same_weights_and_resume_is_exact(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=40, batch_size=16, lr=0.05, warmup_steps=5, checkpoint_every=10, log_every=5, ema_decay=0.9)
    a, b = Toy(), Toy()
    _fit(a, cfg, tmp_path / "a")
    _fit(b, cfg, tmp_path / "b")
    assert torch.equal(a.lin.weight, b.lin.weight)
    # interrupted after 20 steps, then resumed: bit-identical to the uninterrupted run
    short = cfg
    c = Toy()
    c.poison_at = 21  # dies at step 21 with NaN; checkpoint of step 20 is kept
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 20; last good checkpoint \(step 20\)"):
        _fit(c, short, tmp_path / "c")
    d = Toy()
    res = _fit(d, short, tmp_path / "c", resume=True)
    assert res.resumed_from == 20
    assert torch.equal(d.lin.weight, a.lin.weight)
    rows = list(csv.DictReader(open(tmp_path / "c" / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(5, 41, 5)) and "mse" in rows[0]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


def test_resume_refuses_other_config_and_finished_run_is_skipped(tmp_path: Path) -> None:
    cfg = TrainConfig(steps=5, batch_size=8, checkpoint_every=5)
    _fit(Toy(), cfg, tmp_path)
    m = Toy()
    res = _fit(m, cfg, tmp_path)
    assert m.calls == 0 and res.resumed_from == 5  # already finished: no step taken
    with pytest.raises(CheckpointError, match="different config"):
        fit(
            Toy(),
            lambda m, b: m.loss(b),
            lambda i: i,
            len(X),
            cfg,
            tmp_path,
            seed=3,
            fingerprint="other",
            show_progress=False,
        )


def test_checkpoint_truncated_or_tampered(tmp_path: Path) -> None:
    p = tmp_path / "ck"
    save_checkpoint(p, {"w": torch.ones(100)}, {"step": 1})
    tensors, meta = load_checkpoint(p)
    assert torch.equal(tensors["w"], torch.ones(100)) and meta["step"] == 1
    data = p.with_suffix(".safetensors").read_bytes()
    p.with_suffix(".safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(p)
    p.with_suffix(".safetensors").write_bytes(data[:-4] + b"\x00\x00\x00\x40")
    with pytest.raises(CheckpointError, match="truncated or modified"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "nothing")


def test_ema_is_an_averaged_model_that_follows_the_formula_and_copies_buffers() -> None:
    from benchkit.training.ema import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(model, 0.9)
    assert isinstance(ema.averaged, torch.optim.swa_utils.AveragedModel)
    want = {k: v.clone() for k, v in model.state_dict().items()}  # the average starts at the initial weights
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.fill_(step)
        ema.update(model)
        for k, p in model.named_parameters():
            want[k].lerp_(p.detach(), 0.1)  # shadow = 0.9 shadow + 0.1 weights, from the very first step
    for k, v in ema.shadow.items():
        expected = want[k] if k in dict(model.named_parameters()) else model.state_dict()[k]  # buffers: copied
        assert torch.equal(v, expected), k
    ema.shadow["0.weight"].zero_()  # shadow tensors are the averaged copy's: resume writes through them
    assert not ema.averaged.module[0].weight.any()


def test_cpu_training_uses_fused_adamw_with_the_default_paths_values() -> None:
    from benchkit.training.trainer import _optimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3))
    cfg = TrainConfig(lr=1e-2, weight_decay=0.05)
    fused = _optimizer(model, cfg)
    assert fused.defaults["fused"] is True
    twin = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3))
    twin.load_state_dict(model.state_dict())
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in fused.param_groups]
    index = {id(p): i for i, p in enumerate(model.parameters())}
    twin_params = list(twin.parameters())
    plain = torch.optim.AdamW(
        [{**g, "params": [twin_params[index[id(p)]] for p in g["params"]]} for g in groups],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    x = torch.randn(64, 8)
    for _ in range(20):
        for m, opt in ((model, fused), (twin, plain)):
            opt.zero_grad(set_to_none=True)
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resumed_optimizer_state_takes_channels_last_parameters_layout() -> None:
    from benchkit.training.trainer import _optimizer
    from benchkit.training.trainstate import restore_state, state_tensors

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).to(memory_format=torch.channels_last)

    x = torch.randn(4, 3, 10, 10).to(memory_format=torch.channels_last)
    cfg = TrainConfig(lr=1e-2, weight_decay=0.05)

    def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()

    straight = make()
    train(straight, _optimizer(straight, cfg), 6)
    first = make()
    opt = _optimizer(first, cfg)
    train(first, opt, 3)
    tensors, meta = state_tensors(first, opt, None)
    saved = {k: v.contiguous() for k, v in tensors.items()}  # what a checkpoint file gives back
    resumed = make()
    opt2 = _optimizer(resumed, cfg)
    restore_state(saved, meta, resumed, opt2, None)
    weight = next(resumed.parameters())
    assert opt2.state[weight]["exp_avg"].stride() == weight.stride() != weight.contiguous().stride()
    train(resumed, opt2, 3)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
