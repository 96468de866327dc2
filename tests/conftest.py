"""Shared pieces of the tests: a tiny fast config, CLI runners (subprocess and in-process), a shared feature-network
cache, and one torch thread per test module.

Every subprocess runs with one torch/BLAS thread (``OMP_NUM_THREADS=1``): on a small shared machine that is several
times faster than oversubscribed threads, and it keeps float reductions in one fixed order.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

# Before torch loads OpenMP: idle worker threads sleep rather than spin, and one intra-op thread by default, also for
# the CLI commands tests run in this process (they set torch's threads from $OMP_NUM_THREADS; see
# benchkit.core.threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny everything: 256 training images of the embedded shapes dataset, an 8-channel VQ tokenizer and a
# 32-wide AR generator, a few dozen steps each with frequent checkpoints, and a small evaluation.
# Overrides (config keys, not CLI flags) for an in-process run that trains in about a second.
QUICK = [
    "data.options={num_train = 32, num_test = 32}",
    "tokenizer.options.ch=8",
    "generator.options.width=32",
    "tokenizer_train.steps=2",
    "train.steps=2",
    "tokenizer_train.batch_size=8",
    "train.batch_size=8",
    "tokenizer_train.warmup_steps=1",
    "train.warmup_steps=1",
]
DATA = ["--set", "data.options={num_train = 256, num_test = 256}"]
TINY = [
    *DATA,
    "--set", "tokenizer.options.ch=8",
    "--set", "tokenizer_train.steps=48", "--set", "tokenizer_train.batch_size=16",
    "--set", "tokenizer_train.warmup_steps=2", "--set", "tokenizer_train.checkpoint_every=4",
    "--set", "tokenizer_train.log_every=2",
    "--set", "generator.options.width=32",
    "--set", "train.steps=48", "--set", "train.batch_size=16",
    "--set", "train.warmup_steps=2", "--set", "train.checkpoint_every=4", "--set", "train.log_every=2",
    "--set", "eval.num_samples=100", "--set", "eval.num_reference=200", "--set", "eval.cost_repeats=1",
    "--set", "eval.prc=false", "--set", "eval.cost_batch_size=16", "--set", "eval.seed_spread=false",
    "--set", "sample.batch_size=50", "--set", "sample.grid_per_class=2",
]  # fmt: skip
# Keys of an eval row that measure quality (bit-identical for the same run and seed on CPU); cost and time vary.
QUALITY_KEYS = ("fid", "fid_cleanfid", "kid_mean", "kid_cleanfid", "is_mean", "class_acc", "fid_inf")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a benchkit subprocess: one thread, no GPU, no colour codes in its output."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        NO_COLOR="1",
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    env.pop("FORCE_COLOR", None)
    return env


def bk_cmd(*args: str) -> list[str]:
    """The command line of ``benchkit ARGS`` with this interpreter."""
    return [sys.executable, "-m", "benchkit", *args]


def bk(
    *args: str, check: bool = True, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``benchkit ARGS`` to completion; with ``check`` a non-zero exit fails the test with its stderr."""
    p = subprocess.run(
        bk_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env or cli_env(), cwd=cwd, check=False
    )
    if check:
        assert p.returncode == 0, f"benchkit {' '.join(args)} exited {p.returncode}:\n{p.stderr[-4000:]}"
    return p


def last_line(p: subprocess.CompletedProcess[str]) -> str:
    """The last non-empty stdout line (the path benchkit train / sample print)."""
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert lines, f"no output; stderr:\n{p.stderr[-2000:]}"
    return lines[-1].strip()


def build_feature_cache(root: Path, sets: list[str], steps: int = 60) -> Path:
    """Train the evaluation feature network of the dataset given by ``sets`` (``--set`` values) into ``root``.

    The default ``auto`` features fall back, without Inception weights, to a classifier trained for 600 steps on
    the dataset. Here it is trained for ``steps`` instead (stored under the default config's cache name) to save
    time: these tests compare metrics between runs, never with published numbers, so a weaker classifier changes
    nothing they assert.
    """
    import dataclasses

    import torch

    from benchkit.core.config import resolve
    from benchkit.metrics import featurenet, features
    from benchkit.training.checks import load_splits

    cfg = resolve("tiny", None, sets)
    train, _ = load_splits(cfg)
    original = featurenet.train_classifier

    def quick(data, ccfg, device):  # same signature as train_classifier
        return original(data, dataclasses.replace(ccfg, steps=min(ccfg.steps, steps)), device)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        featurenet.train_classifier = quick
        features.load_extractor(cfg.eval.features, train_data=train, cache_dir=root, device=torch.device("cpu"))
    finally:
        featurenet.train_classifier = original
        torch.set_num_threads(threads)
    assert any(root.glob("features/*.safetensors")), "the feature network was not cached"
    return root


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``_cache`` folder with the evaluation feature network of the TINY dataset, built once per session; copy
    it into an out-dir with ``seed_cache``."""
    return build_feature_cache(tmp_path_factory.mktemp("feature-cache") / "_cache", [DATA[1]])


def seed_cache(feature_cache: Path, out_dir: Path) -> None:
    """Give ``out_dir`` a copy of the shared feature-network cache."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(feature_cache, out_dir / "_cache", dirs_exist_ok=True)


def assert_trains_alone_to(twin_runs: Path, feature_cache: Path, out_dir: Path, *args: str) -> None:
    """``benchkit train *args`` alone in ``out_dir`` gives the run of the same name in ``twin_runs`` bit for bit."""
    from safetensors.torch import load_file

    seed_cache(feature_cache, out_dir)
    run = Path(last_line(bk("train", "--out-dir", str(out_dir), "--no-progress", *TINY, *args)))
    a, b = (load_file(str(d / "model.safetensors")) for d in (run, twin_runs / run.name))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), f"{run.name} differs from its twin"


@pytest.fixture()
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No weights anywhere benchkit looks: torch.hub under tmp_path, HOME in tmp_path, no $BENCHKIT_WEIGHTS_DIR and
    no Inception variable."""
    from benchkit.metrics import pretrained
    from benchkit.metrics.inception import INCEPTION_ENV

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(pretrained.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dict of torch-fidelity's FeatureExtractorInceptionV3 with random (Kaiming) weights (its file format)."""
    from random_inception import write_random_inception

    return write_random_inception(tmp_path_factory.mktemp("inception") / "random-inception.pth")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, feature_cache: Path) -> Path:
    """The TINY run (seed 0) trained once, uninterrupted, in its own out-dir; treat it as read-only."""
    out = tmp_path_factory.mktemp("reference") / "out"
    seed_cache(feature_cache, out)
    run = Path(last_line(bk("train", "--out-dir", str(out), "--no-progress", *TINY)))
    assert (run / "model.safetensors").is_file()
    return run


@pytest.fixture(scope="session")
def reference_row(reference_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The evaluation row of ``reference_run`` (uninterrupted, written to a results folder of its own)."""
    import json

    results = tmp_path_factory.mktemp("reference-eval")
    rows = json.loads(bk("eval", str(reference_run), "--results", str(results)).stdout)
    assert len(rows) == 1 and rows[0]["fid"] is not None
    return rows[0]


CliRunner = Callable[[list[str]], tuple[int, str, str]]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a shared, loaded 2-core box OpenMP spinning made them ~100x
    slower (measured: 40 tiny training steps 0.3 s with 1 thread, 30-40 s with 2 under a load of ~3-10)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """``run_cli(args)`` runs ``benchkit ARGS`` in this process: (exit code, stdout, stderr)."""
    from benchkit.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["benchkit", *args])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def load_benchmark(stem: str) -> Iterator[ModuleType]:
    """benchmarks/<stem>.py imported as the module ``bench_<stem>``, registered in sys.modules while in use (its
    dataclasses need it); for a module-scoped fixture: ``yield from load_benchmark("training_parity")``."""
    spec = importlib.util.spec_from_file_location(
        f"bench_{stem}", Path(__file__).parents[1] / "benchmarks" / f"{stem}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
