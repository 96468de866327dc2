"""The vertical path end to end through the CLI: shapes -> vq -> ar + ce -> sample -> eval -> table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAST = [
    "--set",
    "tokenizer_train.steps=120",
    "--set",
    "train.steps=120",
    "--set",
    "eval.num_samples=300",
    "--set",
    "eval.num_reference=600",
    "--set",
    "eval.cost_repeats=1",
    "--set",
    "eval.prc=false",
    "--set",
    "data.options={num_train = 4000, num_test = 1000}",
]


def bk(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "benchkit", *args], capture_output=True, text=True, timeout=900)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_vertical_path_writes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "results"
    p = bk("train", "--out-dir", str(out), "--no-progress", *FAST)
    run_dir = Path(p.stdout.strip().splitlines()[-1])
    assert run_dir.parent == out / "runs" and run_dir.name.startswith("vq-ar-ce-")
    for name in ("config.json", "env.json", "log.csv", "model.safetensors", "model.json", "checkpoint.safetensors"):
        assert (run_dir / name).is_file(), name
    env = json.loads((run_dir / "env.json").read_text())
    assert env["torch"] and env["torch_fidelity"] and env["clean_fid"] and "git_sha" in env
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["train"]["steps"] == 120 and cfg["generator"]["name"] == "ar"
    losses = [float(r["loss"]) for r in csv.DictReader(open(run_dir / "log.csv"))]
    assert losses[-1] < losses[0], "generator loss did not fall"
    tok_dirs = list((out / "tokenizers").iterdir())
    assert len(tok_dirs) == 1 and (tok_dirs[0] / "tokens-discrete.safetensors").is_file()

    # a second train with the same config reuses everything (no retraining, same directory)
    again = bk("train", "--out-dir", str(out), "--no-progress", *FAST)
    assert again.stdout.strip().splitlines()[-1] == str(run_dir)

    grid = tmp_path / "grid.png"
    bk("sample", str(run_dir), "--per-class", "2", "--out", str(grid))
    from PIL import Image

    w, h = Image.open(grid).size
    assert w > 60 and h > 300  # 2 columns x 10 class rows of 32x32 tiles

    p = bk("eval", str(run_dir))
    rows = json.loads(p.stdout)
    assert len(rows) == 1
    row = rows[0]
    for key in (
        "fid",
        "fid_cleanfid",
        "is_mean",
        "kid_mean",
        "class_acc",
        "params",
        "images_per_s",
        "latency_s",
        "flops_per_image",
        "n_samples",
        "features",
    ):
        assert row.get(key) is not None, key
    assert row["n_samples"] == 300 and row["params"] > 10_000 and row["images_per_s"] > 0
    assert abs(row["fid"] - row["fid_cleanfid"]) <= 1e-3 * max(1.0, abs(row["fid"]))

    results = out / "tiny"
    p = bk("table", str(results))
    table = list(csv.DictReader(open(results / "table.csv")))
    assert any(
        r["generator"] == "ar" and r["head"] == "ce" and float(r["fid"]) == pytest.approx(row["fid"], rel=1e-2)
        for r in table
    )
    assert (results / "table.md").read_text().count("|") > 10 and "tabular" in (results / "table.tex").read_text()
    tok_rows = list(csv.DictReader(open(results / "tokenizers.csv")))
    assert tok_rows and float(tok_rows[0]["psnr"]) > 15 and float(tok_rows[0]["codebook_usage"]) > 0
