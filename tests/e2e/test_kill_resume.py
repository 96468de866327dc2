"""Kill -9 at random points of every stage; rerunning the same command resumes and ends exactly where an
uninterrupted run ends. A partially written file is never read as valid.

The fast tests at the top put checkpoints in the states a kill can leave between the steps of a save (see
``benchkit.core.checkpoint``); the slow tests kill real ``benchkit`` processes during tokenizer training, generator
training, sampling and evaluation, several times each, at seeded random moments.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import QUALITY_KEYS, TINY, bk, bk_cmd, cli_env, last_line, seed_cache
from safetensors.torch import load_file

from benchkit.core.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from benchkit.core.errors import CheckpointError

REPO = Path(__file__).parents[2]


# ------------------------------------------------------------------------------------ checkpoint journal (fast)
def _tensors(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 64), v), "step": torch.tensor([int(v)])}


def _stage_only(path: Path, v: float) -> None:
    """What a save of value ``v`` leaves when killed after its step 1 (tensors staged, metadata not committed)."""
    scratch = path.parent / "scratch"
    save_checkpoint(scratch / path.name, _tensors(v), {"step": int(v)})
    shutil.copy(scratch / f"{path.name}.safetensors", path.parent / f"{path.name}.next.safetensors")


def _committed_not_published(path: Path, v: float) -> None:
    """What a save leaves when killed after its step 2 (metadata names the staged tensors, not yet renamed)."""
    _stage_only(path, v)
    shutil.copy(path.parent / "scratch" / f"{path.name}.json", path.with_suffix(".json"))


def test_kill_after_staging_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    ck = tmp_path / "checkpoint"
    save_checkpoint(ck, _tensors(1), {"step": 1})
    _stage_only(ck, 2)
    tensors, meta = load_checkpoint(ck)
    assert meta["step"] == 1 and float(tensors["w"][0, 0]) == 1.0
    save_checkpoint(ck, _tensors(3), {"step": 3})  # the stale staged file is simply overwritten
    tensors, meta = load_checkpoint(ck)
    assert meta["step"] == 3 and float(tensors["w"][0, 0]) == 3.0
    assert not (tmp_path / "checkpoint.next.safetensors").exists()


def test_kill_after_commit_is_rolled_forward_on_load(tmp_path: Path) -> None:
    ck = tmp_path / "checkpoint"
    save_checkpoint(ck, _tensors(1), {"step": 1})
    _committed_not_published(ck, 2)
    live = hashlib.sha256(ck.with_suffix(".safetensors").read_bytes()).hexdigest()
    assert live != json.loads(ck.with_suffix(".json").read_text())["sha256"], "metadata already names new tensors"
    tensors, meta = load_checkpoint(ck)
    assert meta["step"] == 2 and float(tensors["w"][0, 0]) == 2.0
    assert not (tmp_path / "checkpoint.next.safetensors").exists(), "the staged file was published"


def test_first_save_killed_after_commit_still_counts(tmp_path: Path) -> None:
    ck = tmp_path / "model"
    _committed_not_published(ck, 5)
    assert not ck.with_suffix(".safetensors").exists() and checkpoint_exists(ck)
    tensors, meta = load_checkpoint(ck)
    assert meta["step"] == 5 and int(tensors["step"]) == 5


def test_staged_file_that_does_not_match_is_never_published(tmp_path: Path) -> None:
    ck = tmp_path / "checkpoint"
    save_checkpoint(ck, _tensors(1), {"step": 1})
    _committed_not_published(ck, 2)
    staged = tmp_path / "checkpoint.next.safetensors"
    staged.write_bytes(staged.read_bytes()[:100])  # damaged after the fact: neither file matches the metadata
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        load_checkpoint(ck)
    assert staged.exists() and ck.with_suffix(".safetensors").exists()


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``except Exception`` handlers)."""


@pytest.mark.parametrize("where", ["write_log", "_save"])
def test_a_kill_between_log_and_checkpoint_loses_no_log_row(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training log and the checkpoint are two files; dying after either one still resumes to the full log."""
    from torch import nn

    from benchkit.core.config import TrainConfig
    from benchkit.core.interfaces import LossOutput
    from benchkit.training import trainer

    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))

    def run(d: Path) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        cfg = TrainConfig(steps=12, batch_size=8, lr=0.01, warmup_steps=1, checkpoint_every=4, log_every=2)
        trainer.fit(
            model,
            lambda m, idx: LossOutput((m(x[idx]) ** 2).mean(), {}),
            lambda idx: idx,
            len(x),
            cfg,
            d,
            seed=1,
            fingerprint="fp",
            show_progress=False,
        )
        return model

    whole = run(tmp_path / "whole")
    original, calls = getattr(trainer, where), []

    def dies_on_second_call(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # the step-8 write: the other file of the pair is (or is not yet) on disk
            raise _Killed
        original(*args, **kwargs)

    monkeypatch.setattr(trainer, where, dies_on_second_call)
    with pytest.raises(_Killed):
        run(tmp_path / "killed")
    monkeypatch.setattr(trainer, where, original)
    resumed = run(tmp_path / "killed")
    assert _losses(tmp_path / "killed" / "log.csv") == _losses(tmp_path / "whole" / "log.csv")
    assert [s for s, _ in _losses(tmp_path / "whole" / "log.csv")] == [2, 4, 6, 8, 10, 12]
    assert torch.equal(resumed.weight, whole.weight)


def test_no_pickle_is_loaded_without_weights_only() -> None:
    """Checkpoints are safetensors + JSON; any torch.load in benchkit must pass weights_only=True."""
    offenders = []
    for path in [
        *REPO.glob("benchkit/**/*.py"),
        *REPO.glob("tokenizers/*.py"),
        *REPO.glob("generators/*.py"),
        *REPO.glob("heads/*.py"),
    ]:
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find(")", m.start()) + 1]
            if "weights_only=True" not in call:
                offenders.append(f"{path.relative_to(REPO)}: {call}")
        if re.search(r"\bpickle\.loads?\(", text) and "torchvision_sets" not in path.name:
            offenders.append(f"{path.relative_to(REPO)}: pickle.load")
    assert not offenders, offenders


# ---------------------------------------------------------------------------------------- killing processes
def _ckpt_step(path: Path) -> int:
    try:
        return int(json.loads(path.read_text()).get("step", -1))
    except (OSError, ValueError):
        return -1


def _verify_tree(root: Path) -> None:
    """Every committed checkpoint of the tokenizers and runs under ``root`` loads (or rolls forward), every log.csv
    parses."""
    for js in [*root.glob("tokenizers/*/*.json"), *root.glob("runs/*/*.json")]:
        stem = js.with_suffix("")
        if checkpoint_exists(stem):
            load_checkpoint(stem)  # raises on anything partial
    for log in root.rglob("log.csv"):
        with open(log, newline="") as f:
            rows = list(csv.DictReader(f))
        assert all(r["step"] and float(r["loss"]) == float(r["loss"]) for r in rows), log


def _kill_when(cmd: list[str], trigger: Callable[[float], bool], delay: float, limit: float = 120.0) -> str:
    """Start ``cmd``; once ``trigger(elapsed)`` holds, wait ``delay`` s and SIGKILL it. Returns what happened."""
    p = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while p.poll() is None and not trigger(time.monotonic() - t0):
            if time.monotonic() - t0 > limit:
                raise AssertionError(f"trigger never fired for {cmd}")
            time.sleep(0.02)
        time.sleep(delay)
        if p.poll() is not None:
            assert p.returncode == 0, p.stderr.read()[-3000:] if p.stderr else ""
            return "finished"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        if p.returncode == 0:  # it finished between the last poll and the signal
            return "finished"
        assert p.returncode == -signal.SIGKILL, p.returncode
        return "killed"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if p.stderr:
            p.stderr.close()


def _tensors_equal(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys(), f"{a} and {b} hold different tensors"
    for k in ta:
        assert torch.equal(ta[k], tb[k]), f"{k} differs between {a} and {b}"


def _losses(log: Path) -> list[tuple[int, float]]:
    with open(log, newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_kill_during_training_resumes_to_identical_weights(tmp_path: Path, reference_run: Path) -> None:
    """Kill -9 during tokenizer training, token caching and generator training; the rerun finishes with weights
    and loss curves bit-identical to an uninterrupted run (batches, RNG and optimizer state are checkpointed)."""
    out = tmp_path / "out"
    cmd = bk_cmd("train", "--out-dir", str(out), "--no-progress", *TINY)
    rng = random.Random(20240611)

    def tok_ck() -> Path | None:
        return next(out.glob("tokenizers/*/checkpoint.json"), None)

    def run_ck() -> Path | None:
        return next(out.glob("runs/*/checkpoint.json"), None)

    def done(stage: str) -> bool:
        return next(out.glob(f"{stage}/*/model.json"), None) is not None

    def advanced(find: Callable[[], Path | None]) -> Callable[[float], bool]:
        before = _ckpt_step(find()) if find() else -1
        return lambda _t: (f := find()) is not None and _ckpt_step(f) > before

    anywhere = rng.uniform(0.5, 3.0)  # seconds after the start: imports, data, or a training stage
    plan = [  # (trigger, extra delay): two kills in tokenizer training, two in generator training, one anywhere
        (lambda: advanced(tok_ck), 0.0),
        (lambda: advanced(tok_ck), rng.uniform(0.0, 0.4)),
        (lambda: advanced(run_ck), 0.0),
        (lambda: advanced(run_ck), rng.uniform(0.0, 0.3)),
        (lambda: lambda t: t > anywhere, 0.0),
    ]
    stages = []
    for make_trigger, delay in plan:
        what = _kill_when(cmd, make_trigger(), delay)
        if what == "killed":
            stages.append("tokenizer" if not done("tokenizers") else "generator" if not done("runs") else "after")
        _verify_tree(out)
    assert stages.count("tokenizer") >= 2 and stages.count("generator") >= 2, stages

    run = Path(last_line(bk("train", "--out-dir", str(out), "--no-progress", *TINY)))
    assert run.name == reference_run.name
    ref_out = reference_run.parent.parent
    tok_dir = next((out / "tokenizers").iterdir())
    ref_tok = ref_out / "tokenizers" / tok_dir.name
    _tensors_equal(tok_dir / "model.safetensors", ref_tok / "model.safetensors")
    _tensors_equal(tok_dir / "tokens-discrete.safetensors", ref_tok / "tokens-discrete.safetensors")
    _tensors_equal(run / "model.safetensors", reference_run / "model.safetensors")
    assert _losses(run / "log.csv") == _losses(reference_run / "log.csv")
    assert _losses(tok_dir / "log.csv") == _losses(ref_tok / "log.csv")
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 48


@pytest.mark.slow
def test_kill_during_sampling_and_evaluation(
    tmp_path: Path, reference_run: Path, reference_row: dict, feature_cache: Path
) -> None:
    """Kill -9 during ``sample`` and ``eval`` (several times, at random moments); the reruns give the same PNG
    bytes and the same metrics as uninterrupted commands, and no half-written file is ever read."""
    out = tmp_path / "out"
    shutil.copytree(reference_run.parent.parent, out, ignore=shutil.ignore_patterns("_cache", "tiny"))
    seed_cache(feature_cache, out)
    run = out / "runs" / reference_run.name
    rng = random.Random(7)

    ref_png = tmp_path / "ref.png"
    t0 = time.monotonic()
    bk("sample", str(run), "--out", str(ref_png))
    sample_s = time.monotonic() - t0  # kill times scale with it: startup, loading, sampling
    png = tmp_path / "grid.png"
    kills = 0
    for _ in range(3):
        at = rng.uniform(0.2, 0.9) * sample_s
        kills += _kill_when(bk_cmd("sample", str(run), "--out", str(png)), lambda t, at=at: t > at, 0.0) == "killed"
        if png.exists():  # only ever the finished file, never a torn one
            assert png.read_bytes() == ref_png.read_bytes()
    bk("sample", str(run), "--out", str(png))
    assert png.read_bytes() == ref_png.read_bytes()

    results = tmp_path / "results"
    rows_file = results / "rows.jsonl"

    def n_rows() -> int:
        return len(rows_file.read_text().splitlines()) if rows_file.exists() else 0

    def after_next_row() -> Callable[[float], bool]:
        start = n_rows()
        return lambda _t: n_rows() > start

    # eval does all that sample does and more (data, tokenizer row, samples, metrics, cost): kill it early, late,
    # and just after it appended a row
    early, late = rng.uniform(0.3, 0.8) * sample_s, rng.uniform(0.8, 1.3) * sample_s
    for make_trigger, delay in (
        (lambda: lambda t: t > early, 0.0),
        (lambda: lambda t: t > late, 0.0),
        (after_next_row, rng.uniform(0, 0.3) * sample_s),
    ):
        kills += _kill_when(bk_cmd("eval", str(run), "--results", str(results)), make_trigger(), delay) == "killed"
        _verify_tree(out)
        if rows_file.exists():
            from benchkit.results.store import read_rows

            read_rows(results)  # a torn last line is skipped, never parsed as a row
    assert kills >= 4, f"only {kills} of 6 commands were killed before they finished"
    rows = json.loads(bk("eval", str(run), "--results", str(results)).stdout)
    assert len(rows) == 1
    for key in QUALITY_KEYS:
        if reference_row.get(key) is not None:
            assert rows[0][key] == reference_row[key], key
    from benchkit.results.store import read_rows

    df = read_rows(results)
    gen = df[df["kind"] == "generator"]
    assert len(gen) == 1 and gen.iloc[0]["fid"] == reference_row["fid"]
