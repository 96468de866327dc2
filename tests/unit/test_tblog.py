"""Optional TensorBoard logging: events when switched on, nothing (and identical training) when off, one clear error
when asked for without the package."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from benchkit.core.config import TrainConfig, resolve
from benchkit.core.errors import ConfigError
from benchkit.core.identity import fingerprint
from benchkit.core.interfaces import LossOutput
from benchkit.training import tblog
from benchkit.training.trainer import fit

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))


class Toy(nn.Module):
    """A linear map trained to the identity; its preview is a fixed grid of 4 images made from its weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)  # the preview runs in eval mode; training draws from the global RNG

    def loss(self, idx: torch.Tensor) -> LossOutput:
        return LossOutput(((self.drop(self.lin(X[idx])) - X[idx]) ** 2).mean(), {"note": "text is not a scalar"})


def _preview(model: nn.Module) -> torch.Tensor:
    assert not model.training
    torch.rand(100)  # a preview that draws random numbers must not change the training that follows
    w = model.lin.weight.detach().tanh()  # [4, 4] -> 4 images [3, 4, 4] in [-1, 1]
    return w.view(4, 1, 1, 4).expand(4, 3, 4, 4).contiguous()


def _train(run_dir: Path, tensorboard: bool) -> list[dict[str, str]]:
    cfg = TrainConfig(steps=12, batch_size=8, warmup_steps=2, log_every=2, checkpoint_every=6, tensorboard=tensorboard)
    torch.manual_seed(0)
    fit(
        Toy(),
        lambda m, b: m.loss(b),
        lambda idx: idx,
        len(X),
        cfg,
        run_dir,
        seed=1,
        fingerprint="fp",
        show_progress=False,
        preview=_preview,
    )
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_off_writes_nothing_and_is_not_part_of_the_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tblog, "tensorboard_available", lambda: False)  # off never needs the package
    _train(tmp_path, tensorboard=False)
    assert not (tmp_path / tblog.SUBDIR).exists()
    on = resolve("tiny", None, ["train.tensorboard=true", "tokenizer_train.tensorboard=true"])
    assert on.train.tensorboard and fingerprint(on.train) == fingerprint(resolve("tiny").train)


def test_missing_package_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tblog, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^train.tensorboard = true needs the tensorboard package.*pip install"):
        tblog.TensorBoardLog(tmp_path, enabled=True)
    from benchkit.training.generator import train_generator

    cfg = resolve("tiny", None, ["tokenizer_train.tensorboard=true", f'out_dir="{tmp_path}"'])
    with pytest.raises(ConfigError, match="tokenizer_train.tensorboard = true needs"):
        train_generator(cfg, progress=False)  # refused before any data is loaded or any step is trained
    assert not any(tmp_path.iterdir())


def test_missing_package_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    monkeypatch.setattr(tblog, "tensorboard_available", lambda: False)
    code, _, err = run_cli(["train", "--out-dir", str(tmp_path), "--set", "train.tensorboard=true", "--no-progress"])
    assert code == 2
    assert "train.tensorboard = true needs the tensorboard package" in err
    assert "pip install 'benchkit[tensorboard]'" in err  # the extra's brackets are printed, not read as markup


@pytest.mark.skipif(not tblog.tensorboard_available(), reason="needs the tensorboard package (benchkit[tensorboard])")
def test_on_writes_scalars_and_grids_and_training_is_unchanged(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    off = _train(tmp_path / "off", tensorboard=False)
    on = _train(tmp_path / "on", tensorboard=True)
    assert [r["loss"] for r in on] == [r["loss"] for r in off]  # the log and its previews change no number
    events = EventAccumulator(str(tmp_path / "on" / tblog.SUBDIR), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/images_per_s"} <= set(tags["scalars"])
    assert "train/note" not in tags["scalars"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [2, 4, 6, 8, 10, 12]
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in on], rel=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([float(r["lr"]) for r in on], rel=1e-6)
    grids = events.Images("samples")
    assert [e.step for e in grids] == [6, 12]
    assert (grids[0].width, grids[0].height) == (4 * 4 + 5 * 2, 4 + 2 * 2)  # 4 tiles of 4x4, padding 2
