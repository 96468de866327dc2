"""Training seeds: the configs of a model's seeds, unchanged fingerprints for the first, a shared tokenizer when
asked, one tuning per model, and the refusal of seeds on the tokenizer stage."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import benchkit.evaluation.tuning as tuning
from benchkit.core.config import resolve
from benchkit.core.errors import ConfigError
from benchkit.training.artifacts import (
    TrainedRun,
    TrainedTokenizer,
    model_fingerprint,
    run_dir,
    run_fingerprint,
    seed_configs,
    tokenizer_fingerprint,
)
from benchkit.training.checks import check


def _cfg(tmp_path: Path, *extra: str) -> Any:
    return resolve("tiny", None, ["data.image_size=16", f'out_dir="{tmp_path}"', *extra])


def test_seed_configs_differ_only_in_seed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.seeds=3", "seed=5")
    seeds = seed_configs(cfg)
    assert [c.seed for c in seeds] == [5, 6, 7] and [c.train.seed_index for c in seeds] == [0, 1, 2]
    assert seeds[0] is cfg and run_fingerprint(seeds[0]) == run_fingerprint(_cfg(tmp_path, "seed=5"))
    assert len({run_fingerprint(c) for c in seeds}) == 3 and len({tokenizer_fingerprint(c) for c in seeds}) == 3
    assert {model_fingerprint(c) for c in seeds} == {run_fingerprint(cfg)}  # one model, three runs
    for c in seeds:  # everything but the seed is the same config
        assert dataclasses.replace(c, seed=5, train=dataclasses.replace(c.train, seed_index=0)) == cfg
    assert seed_configs(seeds[2]) == seeds  # from any seed back to all of them


def test_shared_tokenizer_when_asked(tmp_path: Path) -> None:
    seeds = seed_configs(_cfg(tmp_path, "train.seeds=2", "train.tokenizer_per_seed=false"))
    assert tokenizer_fingerprint(seeds[0]) == tokenizer_fingerprint(seeds[1])
    assert tokenizer_fingerprint(seeds[0]) == tokenizer_fingerprint(_cfg(tmp_path))  # the first seed's tokenizer
    assert run_fingerprint(seeds[0]) != run_fingerprint(seeds[1])
    assert model_fingerprint(seeds[0]) == model_fingerprint(seeds[1]) != run_fingerprint(seeds[0])


def test_seeds_are_a_generator_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training seeds apply to generators"):
        check(_cfg(tmp_path, "tokenizer_train.seeds=2"), include_eval=False)
    with pytest.raises(ConfigError, match="seeds must be >= 1"):
        _cfg(tmp_path, "train.seeds=0")


def test_tuning_runs_once_per_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def fake_tune_run(run: Any, settings: list, *args: Any) -> list:
        calls.append(run.cfg.train.seed_index)
        return [dataclasses.replace(settings[0], cfg=2.0 + run.cfg.train.seed_index)]

    monkeypatch.setattr(tuning, "tune_run", fake_tune_run)
    seeds = seed_configs(_cfg(tmp_path, "train.seeds=2", "eval.tune=[{ cfg = 2.0 }]"))

    def run_of(c: Any) -> TrainedRun:
        return TrainedRun(
            c, None, TrainedTokenizer(None, tmp_path, "t", None), SimpleNamespace(kind="discrete"), run_dir(c), None
        )  # type: ignore[arg-type]

    base = [seeds[0].sample.settings()]
    first, on = tuning.tune_model(run_of(seeds[0]), base, None, torch.empty(0), 10)
    second, on2 = tuning.tune_model(run_of(seeds[1]), base, None, torch.empty(0), 10)
    assert calls == [0] and first == second and first[0].cfg == 2.0 and (on, on2) == (0, 0)
    assert list(run_dir(seeds[0]).glob("tuned-*.json"))  # stored beside the first seed's run
    # a later seed whose first seed was never tuned tunes itself, and says so
    lone = seed_configs(_cfg(tmp_path / "other", "train.seeds=2", "eval.tune=[{ cfg = 2.0 }]"))[1]
    with caplog.at_level(logging.WARNING):
        own, on3 = tuning.tune_model(run_of(lone), base, None, torch.empty(0), 10)
    assert calls == [0, 1] and own[0].cfg == 3.0 and on3 == 1
    assert any("has not been tuned" in r.getMessage() for r in caplog.records)


def test_a_later_seed_waits_for_its_first_seed_in_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    record = tmp_path / "run0" / "tuned-k.json"
    record.parent.mkdir()
    tuning._wait_for_first_seed(record, "seed1", poll_s=0.05)  # the first seed never started: no wait
    (record.parent / "config.json").write_text("{}")  # started (in another process): wait for its record
    writer = threading.Timer(0.3, lambda: record.write_text("{}"))
    writer.start()
    t0 = time.monotonic()
    tuning._wait_for_first_seed(record, "seed1", poll_s=0.05)
    assert record.is_file() and 0.2 < time.monotonic() - t0 < 5
    record.unlink()
    monkeypatch.setattr(tuning, "TUNE_WAIT_S", 0.2)  # never written: gives up after the limit
    t0 = time.monotonic()
    tuning._wait_for_first_seed(record, "seed1", poll_s=0.05)
    assert not record.is_file() and time.monotonic() - t0 < 2
