"""``benchkit eval`` under ``eval.protocol = "adm"`` with the extra FD-DINOv2 column, end to end on a tiny run: the
rows' labels and ids, and the checks before compute."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK, build_feature_cache
from random_inception import write_random_inception

from benchkit.core.config import resolve
from benchkit.core.errors import ConfigError
from benchkit.evaluation import protocols
from benchkit.evaluation.commands import eval_command
from benchkit.metrics import adm
from benchkit.training.checks import load_splits

sys.path.insert(0, str(Path(__file__).parent))
from test_adm_protocol import random_stats  # noqa: E402
from test_dinov2_cmmd import release_dinov2  # noqa: E402
from test_protocols import fast_frechet  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
SETS = [*QUICK, "sample.batch_size=4"]
EVAL = [
    "eval.num_samples=8",
    "eval.num_reference=10",
    "eval.cost_repeats=1",
    "eval.cost_batch_size=4",
    "eval.seed_spread=false",
    'eval.fd_dinov2="dinov2-vit-s-14"',
]


def test_eval_rows_under_the_adm_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchkit.training.generator import train_generator

    monkeypatch.setattr(adm, "adm_frechet_distance", fast_frechet)  # scipy's sqrtm of 2048 x 2048: minutes here
    monkeypatch.setattr(protocols, "cleanfid_fid_or_reason", lambda *a: (fast_frechet(*a), ""))
    out = tmp_path / "out"
    cfg = resolve("tiny", None, [*SETS, f'out_dir="{out}"'])
    run = train_generator(cfg, progress=False)
    build_feature_cache(out / "_cache", [*SETS, f'out_dir="{out}"'], steps=5)
    _, test = load_splits(cfg)
    inception = write_random_inception(tmp_path / "inception.pth")
    dino = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(release_dinov2(384, 12, seed=4), dino)
    batch = adm.write_adm_batch(
        tmp_path / "VIRTUAL_tiny.npz", adm.nchw_to_nhwc(test.images[:10]), stats=random_stats(np.random.default_rng(0))
    )
    adm_sets = [
        'eval.protocol="adm"',
        'eval.features="inception"',
        f'eval.reference_batch="{batch}"',
        f'eval.inception_weights="{inception}"',
    ]
    with pytest.raises(ConfigError, match="dinov2_vits14_pretrain.pth"):  # before any sampling
        eval_command(run.dir, overrides=[*EVAL, *adm_sets, f'eval.dinov2_weights="{tmp_path / "no.pth"}"'])
    ours = [*EVAL, f'eval.dinov2_weights="{dino}"']
    row = eval_command(run.dir, overrides=[*ours, *adm_sets], results_dir=tmp_path / "res").rows[0]
    assert (row["protocol"], row["reference"]) == ("adm", "VIRTUAL_tiny.npz")
    assert row["features"].startswith("inception-v3@")  # random weights: not the standard file's tag
    assert {"fid", "sfid", "is_mean", "precision", "recall", "fd_dinov2", "fd_dinov2_features"} <= set(row)
    assert "is_std" not in row and "kid_mean" not in row and row["n_samples"] == 8
    plain = eval_command(run.dir, overrides=ours, results_dir=tmp_path / "res").rows[0]
    assert (plain["protocol"], plain["reference"]) == ("benchkit", "shapes-test-10")
    assert plain["features"].startswith("dataset-fused@") and plain["row_id"] != row["row_id"]
    # the batch holds the held-out images themselves: FD-DINOv2 against either is the same number
    assert plain["fd_dinov2"] == pytest.approx(row["fd_dinov2"], rel=1e-6)
    stored = [json.loads(line) for line in (tmp_path / "res" / "rows.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in stored} == {"generator", "tokenizer"}
    assert all(r.get("protocol") in ("benchkit", "adm") and r.get("features") for r in stored)
    assert all(r["protocol"] == "benchkit" for r in stored if r["kind"] == "tokenizer")  # rFID: held-out images
