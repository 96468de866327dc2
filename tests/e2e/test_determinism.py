"""On CPU the same seed gives bit-identical weights, samples and metrics; another seed gives other ones.

Model initialisation is seeded from the config (not from whatever ran before in the process), batches are a pure
function of (seed, step) and every sampling batch draws from its own seeded ``torch.Generator``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import QUALITY_KEYS, TINY, bk, last_line, seed_cache
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _quality(row: dict) -> dict:
    return {k: row[k] for k in QUALITY_KEYS if row.get(k) is not None}


def test_same_seed_is_bit_identical_even_after_other_work_in_the_process(
    tmp_path: Path, reference_run: Path, reference_row: dict, feature_cache: Path
) -> None:
    """Train in-process after consuming the global RNG (as a sweep's second job would): same weights, same token
    cache, same samples and metrics as the reference run trained by its own ``benchkit train`` process."""
    from benchkit.config import resolve
    from benchkit.pipeline import train_generator

    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    sets = [TINY[i + 1] for i in range(0, len(TINY), 2)] + [f'out_dir="{out}"', 'device="cpu"']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference process's float reduction order
    try:
        torch.rand(1000)  # earlier work in the same process moves the global RNG
        torch.nn.Linear(10, 10)
        run = train_generator(resolve("tiny", None, sets), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert run.dir.name == reference_run.name
    assert _same_tensors(run.dir / "model.safetensors", reference_run / "model.safetensors")
    ref_tok = reference_run.parent.parent / "tokenizers" / run.tokenizer.dir.name
    assert _same_tensors(run.tokenizer.dir / "model.safetensors", ref_tok / "model.safetensors")
    assert _same_tensors(run.tokenizer.dir / "tokens-discrete.safetensors", ref_tok / "tokens-discrete.safetensors")

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    bk("sample", str(reference_run), "--out", str(a))
    bk("sample", str(run.dir), "--out", str(b))
    assert a.read_bytes() == b.read_bytes()

    row = json.loads(bk("eval", str(run.dir), "--results", str(tmp_path / "results")).stdout)[0]
    assert _quality(row) == _quality(reference_row) and "fid" in _quality(row)


def test_another_seed_gives_other_weights_samples_and_metrics(
    tmp_path: Path, reference_run: Path, reference_row: dict, feature_cache: Path
) -> None:
    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    other = Path(last_line(bk("train", "--out-dir", str(out), "--no-progress", *TINY, "--set", "seed=1")))
    assert other.name != reference_run.name
    assert not _same_tensors(other / "model.safetensors", reference_run / "model.safetensors")

    paths = {name: tmp_path / f"{name}.png" for name in ("ref0", "ref0-again", "ref1", "other")}
    bk("sample", str(reference_run), "--out", str(paths["ref0"]))
    bk("sample", str(reference_run), "--out", str(paths["ref0-again"]), "--seed", "0")
    bk("sample", str(reference_run), "--out", str(paths["ref1"]), "--seed", "1")
    bk("sample", str(other), "--out", str(paths["other"]))
    data = {k: p.read_bytes() for k, p in paths.items()}
    assert data["ref0"] == data["ref0-again"], "--seed 0 is the run's own seed"
    assert data["ref1"] != data["ref0"], "the sampling seed changes the samples"
    assert data["other"] != data["ref0"], "the training seed changes the samples"

    row = json.loads(bk("eval", str(other), "--results", str(tmp_path / "results")).stdout)[0]
    assert row["seed"] == 1 and reference_row["seed"] == 0
    assert row["fid"] != reference_row["fid"] and row["kid_mean"] != reference_row["kid_mean"]
