"""Cost rows: each row's peak memory covers its own sampling calls only, and labels use the run's class count."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from benchkit.core.config import EvalConfig, RunConfig
from benchkit.evaluation.evaluate import sampling_cost
from benchkit.metrics import cost
from benchkit.sampling.generate import SampleSettings
from benchkit.training.artifacts import TrainedRun, TrainedTokenizer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class HungryGenerator(nn.Module):
    """Holds ``mib`` MiB while it generates; records the labels it was asked for."""

    def __init__(self, mib: int, num_classes: int, device: str) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1, device=device))
        self.mib, self.num_classes, self.seen = mib, num_classes, []

    def generate(self, labels: torch.Tensor, **kwargs: object) -> torch.Tensor:
        self.seen.append(labels.cpu())
        held = torch.ones(self.mib * 2**18, device=self.anchor.device)  # float32: 4 bytes each
        return torch.zeros(len(labels), 2, 2, dtype=torch.long, device=held.device)


class FlatTokenizer(nn.Module):
    def decode(self, tokens: torch.Tensor, kind: str) -> torch.Tensor:
        return torch.zeros(len(tokens), 3, 8, 8, device=tokens.device)


def _row(mib: int, device: str, num_classes: int = 3) -> tuple[dict, HungryGenerator]:
    gen = HungryGenerator(mib, num_classes, device)
    cfg = RunConfig(device=device, eval=EvalConfig(cost_batch_size=5, cost_repeats=1))
    tok = TrainedTokenizer(FlatTokenizer(), Path("tok"), "fp", None)
    run = TrainedRun(cfg, gen, tok, SimpleNamespace(kind="discrete"), Path("run"), None)  # type: ignore[arg-type]
    return sampling_cost(run, SampleSettings(), cfg), gen  # type: ignore[arg-type]


@pytest.mark.parametrize("device", DEVICES)
def test_two_rows_do_not_share_a_peak(device: str) -> None:
    if not cost.peak_memory_resettable(device):
        pytest.skip("this platform cannot reset the CPU peak (not Linux)")
    big, _ = _row(600, device)
    small, _ = _row(8, device)
    assert big["peak_mem_mb"] > small["peak_mem_mb"] + 400, (big["peak_mem_mb"], small["peak_mem_mb"])
    again, _ = _row(600, device)
    assert again["peak_mem_mb"] == pytest.approx(big["peak_mem_mb"], abs=100)


def test_cost_labels_use_the_runs_classes() -> None:
    _, gen = _row(1, "cpu", num_classes=3)
    labels = torch.cat(gen.seen)
    assert labels.max() == 2 and set(labels.tolist()) == {0, 1, 2}
