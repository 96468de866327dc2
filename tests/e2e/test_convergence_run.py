"""Convergence points through the real pipeline: a tiny run trained with and without them has bitwise equal
weights, its points are stored and scored, and the results get the still_improving mark and the FLOPs plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, seed_cache
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def test_convergence_points_leave_weights_alone_and_reach_the_table(tmp_path: Path, feature_cache: Path) -> None:
    from benchkit.core.config import resolve
    from benchkit.evaluation.evaluate import evaluate_run
    from benchkit.sweeps.runner import write_outputs
    from benchkit.training.checks import load_splits
    from benchkit.training.generator import train_generator

    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    sets = [*TINY[1::2], f"out_dir={out}"]
    plain_cfg = resolve("tiny", None, sets)
    splits = load_splits(plain_cfg)
    plain = train_generator(plain_cfg, progress=False, splits=splits)
    assert not (plain.dir / "convergence.json").exists()
    moved = plain.dir.with_name(plain.dir.name + "-plain")
    shutil.move(plain.dir, moved)  # the same fingerprint: convergence points are not part of the run's identity

    cfg = resolve("tiny", None, [*sets, "train.convergence_points=3", "train.convergence_samples=20"])
    run = train_generator(cfg, progress=False, splits=splits)
    assert run.dir == plain.dir
    a, b = load_file(moved / "model.safetensors"), load_file(run.dir / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)  # bitwise equal weights
    points = json.loads((run.dir / "convergence.json").read_text())["points"]
    assert [p["step"] for p in points] == [12, 24, 48]
    assert [p["images_seen"] for p in points] == [192, 384, 768]
    assert points[2]["train_flops"] == 4 * points[0]["train_flops"] > 0
    assert all(p["fid"] > 0 and p["n_samples"] == 20 and p["fid_bootstrap_std"] > 0 for p in points)

    results = tmp_path / "results"
    rows = evaluate_run(run, *splits, results)
    assert rows[0]["convergence_fid"] == points[-1]["fid"] and rows[0]["convergence_fid_prev"] == points[1]["fid"]
    assert rows[0]["train_flops"] == points[-1]["train_flops"]  # the same per-step count
    assert rows[0]["train_lr"] == cfg.train.lr  # a sweep may set it per combination: each row says which
    written = write_outputs(results, out)
    assert results / "fid_vs_train_flops.png" in written
    table = (results / "table.md").read_text()
    assert "still_improving" in table and "convergence_fid" in table and "train_lr" in table
