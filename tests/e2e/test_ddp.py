"""DDP on CPU: ``torchrun --nproc_per_node=2`` (gloo) trains, samples and evaluates like one process does.

Training comparison and its tolerance: raster AR + cross-entropy with ``generator.options.label_drop=0.0`` has no
randomness in its loss, DDP averages the two ranks' gradients of equal half-batches, i.e. the gradient of the mean
loss over the same global batch of 16, and clipping, AdamW and EMA then see identical gradients. What is left are
float32 summation-order differences (all-reduce, smaller matmuls), about 1e-6 relative; the test allows 1e-4 on
every logged loss (relative) and on the weights (relative L2 norm of the difference), 100x that, while any real
difference (another batch, label dropout, a rank-local loss in the log) is 1e-3 or more.

The tokenizer is trained under torchrun too (its EMA codebook follows rank 0, so it is not compared): that stage
takes a file lock, which used to deadlock (rank 1 blocked on the lock while rank 0 waited in the first all-reduce).
The single-process run reuses the DDP run's tokenizer, so both generators learn from the same tokens.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import QUALITY_KEYS, TINY, bk, cli_env, last_line, seed_cache
from safetensors.torch import load_file

from benchkit.training.convergence import read_points

pytestmark = pytest.mark.slow

TOL = 1e-4
DETERMINISTIC = [
    *TINY,
    "--set",
    "generator.options.label_drop=0.0",
    "--set",
    "train.log_every=1",
    "--set",
    "train.convergence_points=2",
    "--set",
    "train.convergence_samples=20",
]


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``torchrun --standalone --nproc_per_node=N ARGS``; a hang (deadlock) fails after ``timeout`` s."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    for attempt in range(2):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(), check=False)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"torchrun hung for {timeout} s (deadlock?): {' '.join(args)}") from e
        # --standalone picks a free port and releases it before the workers bind it: another job may take it first
        if p.returncode == 0 or attempt or "address already in use" not in p.stderr.lower():
            break
    assert p.returncode == 0, f"torchrun {' '.join(args)} exited {p.returncode}:\n{p.stderr[-5000:]}"
    return p


def _losses(log: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader(open(log))]


@pytest.fixture(scope="module")
def ddp_and_single(tmp_path_factory: pytest.TempPathFactory, feature_cache: Path) -> tuple[Path, Path]:
    """(run trained by 2 DDP processes, the same config trained by one process on the same tokenizer)."""
    root = tmp_path_factory.mktemp("ddp")
    ddp_out, single_out = root / "ddp", root / "single"
    seed_cache(feature_cache, ddp_out)
    p = torchrun("-m", "benchkit", "train", "--out-dir", str(ddp_out), "--no-progress", *DETERMINISTIC)
    ddp_run = Path(last_line(p))
    shutil.copytree(ddp_out / "tokenizers", single_out / "tokenizers")
    seed_cache(feature_cache, single_out)
    single_run = Path(last_line(bk("train", "--out-dir", str(single_out), "--no-progress", *DETERMINISTIC)))
    return ddp_run, single_run


def test_torchrun_trains_tokenizer_and_generator(ddp_and_single: tuple[Path, Path]) -> None:
    ddp_run, _ = ddp_and_single
    tok_dir = next((ddp_run.parent.parent / "tokenizers").iterdir())
    tok_meta = json.loads((tok_dir / "model.json").read_text())
    assert tok_meta["steps"] == 48 and json.loads((tok_dir / "checkpoint.json").read_text())["step"] == 48
    tok_losses = _losses(tok_dir / "log.csv")
    assert len(tok_losses) == 24 and tok_losses[-1] < tok_losses[0]
    assert json.loads((ddp_run / "checkpoint.json").read_text())["step"] == 48
    env = json.loads((ddp_run / "env.json").read_text())
    assert env  # written once, by rank 0
    points = read_points(ddp_run)  # scored by rank 0 only, while rank 1 waits at the barrier
    assert [p["step"] for p in points] == [24, 48] and all(p["n_samples"] == 20 for p in points)


def test_ddp_training_matches_single_process_on_the_same_global_batch(ddp_and_single: tuple[Path, Path]) -> None:
    ddp_run, single_run = ddp_and_single
    assert ddp_run.name == single_run.name  # same config fingerprint
    a, b = _losses(ddp_run / "log.csv"), _losses(single_run / "log.csv")
    assert len(a) == len(b) == 48
    worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    assert worst < TOL, f"logged losses differ by {worst:.2e} (relative)"
    assert a[-1] < a[0]
    wa, wb = load_file(str(ddp_run / "model.safetensors")), load_file(str(single_run / "model.safetensors"))
    assert wa.keys() == wb.keys()
    num = sum(float(((wa[k] - wb[k]).double() ** 2).sum()) for k in wa if wa[k].is_floating_point())
    den = sum(float((wb[k].double() ** 2).sum()) for k in wb if wb[k].is_floating_point())
    assert (num / den) ** 0.5 < TOL, f"weights differ by {(num / den) ** 0.5:.2e} (relative L2)"
    meta_a, meta_b = (json.loads((r / "model.json").read_text()) for r in (ddp_run, single_run))
    assert abs(meta_a["final_loss"] - meta_b["final_loss"]) / meta_b["final_loss"] < TOL


def test_torchrun_eval_matches_single_process(ddp_and_single: tuple[Path, Path], tmp_path: Path) -> None:
    """Evaluation under torchrun: rank 0 writes one row whose quality equals a single-process evaluation."""
    ddp_run, _ = ddp_and_single
    torchrun("-m", "benchkit", "eval", str(ddp_run), "--results", str(tmp_path / "ddp"))
    single = json.loads(bk("eval", str(ddp_run), "--results", str(tmp_path / "single")).stdout)[0]
    lines = [json.loads(ln) for ln in (tmp_path / "ddp" / "rows.jsonl").read_text().splitlines() if ln.strip()]
    gen = [r for r in lines if r["kind"] == "generator"]
    assert len(gen) == 1, "exactly one row, from rank 0"
    for key in QUALITY_KEYS:
        if single.get(key) is not None:
            assert gen[0][key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key


WORKER = textwrap.dedent('''
    """Sharded sampling on every rank; rank 0 saves what it gathered."""
    import sys

    import torch
    from safetensors.torch import save_file

    from benchkit.core import distributed as bdist
    from benchkit.sampling.generate import SampleSettings, generate_images
    from benchkit.core.registry import GENERATORS, TOKENIZERS

    torch.manual_seed(0)
    tok = TOKENIZERS.create("vq", image_size=32, ch=8).eval()
    gen = GENERATORS.create("ar", spec=tok.specs["discrete"], head="ce", num_classes=10, width=32).eval()
    bdist.init_distributed(torch.device("cpu"))
    out = {}
    for name, n, batch in (("many", 7, 2), ("fewer_batches_than_ranks", 3, 4)):
        labels = torch.arange(n) % 10
        out[name] = generate_images(gen, tok, "discrete", labels, SampleSettings(temperature=1.0), seed=5,
                                    batch_size=batch, distributed=True)
    if bdist.is_main():
        save_file(out, sys.argv[1])
''')


def test_sharded_sampling_gathers_every_image_in_label_order(tmp_path: Path) -> None:
    """generate_images(distributed=True) on 2 ranks returns exactly the images of one process (bit-identical),
    including when there are fewer batches than ranks."""
    from benchkit.core.registry import GENERATORS, TOKENIZERS
    from benchkit.sampling.generate import SampleSettings, generate_images

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun(str(script), str(tmp_path / "gathered.safetensors"), timeout=180)
    gathered = load_file(str(tmp_path / "gathered.safetensors"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' float reduction order
    try:
        torch.manual_seed(0)
        tok = TOKENIZERS.create("vq", image_size=32, ch=8).eval()
        gen = GENERATORS.create("ar", spec=tok.specs["discrete"], head="ce", num_classes=10, width=32).eval()
        for name, n, batch in (("many", 7, 2), ("fewer_batches_than_ranks", 3, 4)):
            labels = torch.arange(n) % 10
            single = generate_images(
                gen, tok, "discrete", labels, SampleSettings(temperature=1.0), seed=5, batch_size=batch
            )
            assert gathered[name].shape == (n, 3, 32, 32) and gathered[name].dtype == torch.uint8
            assert torch.equal(gathered[name], single), name
    finally:
        torch.set_num_threads(threads)
