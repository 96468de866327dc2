"""Job processes (benchkit.sweeps.parallel): how many, which job each claims, and in what order."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from benchkit.core.errors import ConfigError
from benchkit.sweeps.parallel import claim, claim_order, resolve_jobs
from benchkit.sweeps.sweepfile import expand


def _jobs(combos: list[tuple[str, str]]) -> list:
    heads = {"kl": "diffloss", "rq": "ce", "vq": "ce"}
    jobs = expand(
        {
            "preset": "tiny",
            "combos": [{"tokenizer.name": t, "generator.name": g, "head.name": heads[t]} for t, g in combos],
        }
    )
    assert all(j.cfg is not None for j in jobs)
    return jobs


def test_resolve_jobs() -> None:
    assert resolve_jobs(None, valid_jobs=6, sharded=False) == 1  # one process unless asked
    assert resolve_jobs(None, valid_jobs=6, sharded=True) == 1
    assert resolve_jobs(2, valid_jobs=6, sharded=False) == 2
    assert resolve_jobs(3, valid_jobs=2, sharded=False) == 2  # never more than the jobs
    assert resolve_jobs(1, valid_jobs=6, sharded=True) == 1
    with pytest.raises(ConfigError, match=r"--jobs must be an integer >= 1, got 0"):
        resolve_jobs(0, valid_jobs=6, sharded=False)
    with pytest.raises(ConfigError, match="do not combine"):
        resolve_jobs(2, valid_jobs=6, sharded=True)


def test_a_job_is_claimed_once(tmp_path: Path) -> None:
    a, b = _jobs([("vq", "ar"), ("vq", "mar")])
    assert claim(tmp_path, a) and claim(tmp_path, b)
    assert not claim(tmp_path, a) and not claim(tmp_path, b)
    assert len(list(tmp_path.iterdir())) == 2


def test_claim_order_interleaves_tokenizers() -> None:
    jobs = _jobs([("kl", "ar"), ("kl", "mar"), ("rq", "ar"), ("vq", "ar"), ("vq", "mar")])
    order = [(j.cfg.tokenizer.name, j.cfg.generator.name) for j in claim_order(jobs)]
    assert sorted(order) == sorted((j.cfg.tokenizer.name, j.cfg.generator.name) for j in jobs)
    assert [t for t, _ in order[:3]] == ["kl", "rq", "vq"]  # the first three jobs start three different tokenizers
    assert order[3:] == [("kl", "mar"), ("vq", "mar")]


def test_claim_order_puts_every_first_seed_first() -> None:
    jobs = expand(
        {
            "preset": "tiny",
            "set": ["train.seeds=3", "train.tokenizer_per_seed=false"],
            "combos": [
                {"tokenizer.name": "vq", "generator.name": "ar", "head.name": "ce"},
                {"tokenizer.name": "kl", "generator.name": "ar", "head.name": "diffloss"},
            ],
        }
    )
    order = [(j.cfg.train.seed_index, j.cfg.tokenizer.name) for j in claim_order(jobs)]
    assert order == [(0, "kl"), (0, "vq"), (1, "kl"), (1, "vq"), (2, "kl"), (2, "vq")]


def test_bad_jobs_value_is_one_line() -> None:
    from typer.testing import CliRunner

    from benchkit.cli import app

    res = CliRunner().invoke(app, ["run", "--jobs", "0"])
    assert res.exit_code != 0
    assert "--jobs must be an integer >= 1, got 0" in str(res.exception)  # main() prints it as one line


class _FakeProcess:
    """Stands in for a job process: the first wait() sends this process SIGTERM, as `kill <parent pid>` would."""

    made: list[_FakeProcess] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.terminated = False
        _FakeProcess.made.append(self)

    def wait(self) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return 0

    def terminate(self) -> None:
        self.terminated = True


def test_sigterm_to_the_parent_ends_its_job_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import benchkit.sweeps.parallel as bp

    # the handler is only installed in the main thread; elsewhere the fake's SIGTERM would end pytest itself
    assert threading.current_thread() is threading.main_thread()
    monkeypatch.setattr(bp.subprocess, "Popen", _FakeProcess)
    _FakeProcess.made.clear()
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        bp.run_job_processes(["run"], 2, tmp_path)
    assert exc.value.code == 128 + signal.SIGTERM
    assert time.perf_counter() - t0 < 4  # the wait was interrupted
    assert len(_FakeProcess.made) == 2 and all(p.terminated for p in _FakeProcess.made)
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is restored


def test_the_sweep_files_jobs_is_the_default_process_count(tmp_path: Path) -> None:
    from benchkit.sweeps.commands import sweep_command
    from benchkit.sweeps.sweepfile import load_sweep, sweep_jobs

    assert sweep_jobs(load_sweep("tiny")) == 2 and sweep_jobs(load_sweep("long")) == 1
    assert sweep_jobs(load_sweep("budget")) is None
    for bad in (0, "two", True):
        with pytest.raises(ConfigError, match=f"sweep key jobs must be an integer >= 1, got {bad!r}"):
            sweep_jobs({"jobs": bad})

    class Planned(Exception):
        pass

    seen = []

    def stop(plan) -> None:  # the plan, before any compute
        seen.append((plan.processes, plan.shard))
        raise Planned

    for kwargs in ({}, {"processes": 1}, {"shard_text": "0/2"}):
        with pytest.raises(Planned):
            sweep_command("tiny", command=["run"], out_dir=tmp_path, on_plan=stop, **kwargs)
    assert seen == [(2, (0, 1)), (1, (0, 1)), (1, (0, 2))]  # the file's 2; --jobs 1 and --shard override it
