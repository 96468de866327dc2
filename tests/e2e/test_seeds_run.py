"""Training seeds end to end: ``benchkit sweep --seeds 3`` trains three ordinary runs per model, the table folds
them (mean, 95% interval, n_seeds), a seed trained with the others equals the same seed trained alone, and a lost
seed is retrained without touching the others."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, assert_trains_alone_to, bk, seed_cache

pytestmark = pytest.mark.slow

SETS = [TINY[i + 1] for i in range(0, len(TINY), 2)] + ["eval.num_samples=48", "eval.num_reference=96", "eval.tune=[]"]


def _sweep(tmp_path: Path) -> Path:
    lines = ",\n  ".join(json.dumps(s) for s in SETS)
    path = tmp_path / "seeds.toml"
    path.write_text(
        f'preset = "tiny"\nname = "seeds"\nset = [\n  {lines}\n]\n'
        'combos = [{ "tokenizer.name" = "vq", "generator.name" = "ar", "head.name" = "ce" }]\n'
    )
    return path


def test_three_seeds_fold_into_one_row_and_resume(tmp_path: Path, feature_cache: Path) -> None:
    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    sweep = _sweep(tmp_path)
    bk("sweep", str(sweep), "--seeds", "3", "--out-dir", str(out), "--no-progress", timeout=900)
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 3 and len(list((out / "tokenizers").iterdir())) == 3  # each seed retrains its tokenizer
    rows = [json.loads(line) for line in (out / "seeds" / "rows.jsonl").read_text().splitlines()]
    gen = [r for r in rows if r.get("kind") == "generator"]
    assert sorted(r["seed"] for r in gen) == [0, 1, 2] and len({r["model"] for r in gen}) == 1
    table = pd.read_csv(out / "seeds" / "table.csv")
    assert len(table) == 1 and table.loc[0, "n_seeds"] == 3
    fids = [r["fid"] for r in gen]
    assert table.loc[0, "fid"] == pytest.approx(sum(fids) / 3, abs=0.01)  # the mean over seeds (2 decimals)
    assert table.loc[0, "fid_ci95"] > 0 and table.loc[0, "fid_sd"] > 0

    # seed 1 trained alone (its own command, its own directory) is the same run, bit for bit
    assert_trains_alone_to(
        out / "runs", feature_cache, tmp_path / "alone", "--set", "seed=1", "--set", "train.seed_index=1"
    )
    run = next(r for r in runs if json.loads((r / "config.json").read_text())["seed"] == 1)

    # a lost seed is retrained; the others are reused as they are
    lost = next(r for r in runs if r.name == run.name)
    stamps = {r.name: (r / "model.safetensors").stat().st_mtime_ns for r in runs if r != lost}
    for f in lost.glob("model.*"):
        f.unlink()
    bk("sweep", str(sweep), "--seeds", "3", "--out-dir", str(out), "--no-progress", timeout=900)
    assert (lost / "model.safetensors").is_file()
    assert {r.name: (r / "model.safetensors").stat().st_mtime_ns for r in runs if r != lost} == stamps
