"""Thread settings: the order in which --threads / config, $OMP_NUM_THREADS and the shard count decide; bad values;
the passive OpenMP wait policy set by the CLI before torch is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CliRunner

from benchkit.core import threads as bt
from benchkit.core.errors import ConfigError


@pytest.fixture()
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bt, "usable_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_defaults_divide_the_cores_between_shards(four_cores: None) -> None:
    assert bt.resolve_threads(None) == (4, "every usable core")
    assert bt.resolve_threads(None, shards=2)[0] == 2
    assert bt.resolve_threads(None, shards=3)[0] == 1
    assert bt.resolve_threads(None, shards=8)[0] == 1  # never 0


def test_request_beats_environment_beats_shards(four_cores: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert bt.resolve_threads(None, shards=2) == (3, "OMP_NUM_THREADS")
    assert bt.resolve_threads(5, shards=2) == (5, "requested")
    monkeypatch.setenv("OMP_NUM_THREADS", "not-a-number")
    assert bt.resolve_threads(None, shards=2)[0] == 2


@pytest.mark.parametrize("bad", [0, -1, True, "2", 1.5])
def test_bad_thread_counts_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        bt.resolve_threads(bad)  # type: ignore[arg-type]


def test_bad_shard_count_is_refused(four_cores: None) -> None:
    with pytest.raises(ConfigError, match="shards must be >= 1"):
        bt.resolve_threads(None, shards=0)


def test_apply_sets_torch_threads_and_does_not_carry_over(four_cores: None) -> None:
    before = torch.get_num_threads()
    try:
        assert bt.apply_threads(1) == 1 == torch.get_num_threads()
        assert bt.apply_threads(None, shards=2) == 2 == torch.get_num_threads()  # one job's request is not kept
        assert bt.apply_threads(2) == 2
    finally:
        torch.set_num_threads(before)


def test_apply_sets_the_blas_threads_of_numpy_and_scipy_too(four_cores: None) -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    before, original = torch.get_num_threads(), threadpool_limits(limits=None)
    try:
        for n in (1, 2):
            bt.apply_threads(n)
            blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
            assert blas, "numpy and scipy load at least one BLAS library"
            assert {i["num_threads"] for i in blas} == {n}, blas
    finally:
        original.restore_original_limits()
        torch.set_num_threads(before)


def test_prepare_openmp_is_passive_for_shards_and_job_processes_and_keeps_a_users_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(bt.WAIT_POLICY_ENV, raising=False)
    bt.prepare_openmp(["benchkit", "run"])
    assert bt.WAIT_POLICY_ENV not in os.environ  # a process alone keeps OpenMP's default
    bt.prepare_openmp(["benchkit", "run", "--shard", "1/1"])
    assert bt.WAIT_POLICY_ENV not in os.environ
    for argv in (["benchkit", "run", "--shard", "0/2"], ["benchkit", "sweep", "f.toml", "--shard=1/3"]):
        monkeypatch.delenv(bt.WAIT_POLICY_ENV, raising=False)
        bt.prepare_openmp(argv)
        assert os.environ[bt.WAIT_POLICY_ENV] == "PASSIVE"
    for argv in (["benchkit", "run", "--jobs", "1", "--claim-dir", "/tmp/c"], ["benchkit", "run", "--claim-dir=/c"]):
        monkeypatch.delenv(bt.WAIT_POLICY_ENV, raising=False)
        bt.prepare_openmp(argv)  # one job process of --jobs N
        assert os.environ[bt.WAIT_POLICY_ENV] == "PASSIVE"
    monkeypatch.delenv(bt.WAIT_POLICY_ENV, raising=False)
    bt.prepare_openmp(["benchkit", "run", "--jobs", "2"])  # the parent only waits
    assert bt.WAIT_POLICY_ENV not in os.environ
    monkeypatch.setenv(bt.WAIT_POLICY_ENV, "ACTIVE")
    bt.prepare_openmp(["benchkit", "run", "--shard", "0/2"])
    assert os.environ[bt.WAIT_POLICY_ENV] == "ACTIVE"
    assert [bt.shard_count(a) for a in (["--shard", "x"], ["--shard"], ["--shard=2/0"], ["--shard", "0/4"])] == [
        1,
        1,
        1,
        4,
    ]


def test_cli_sets_the_wait_policy_of_a_shard_before_torch_is_imported() -> None:
    env = {k: v for k, v in os.environ.items() if k != bt.WAIT_POLICY_ENV}
    # the policy at the moment torch is first imported (by the CLI package, or right after it)
    code = (
        "import os, sys, importlib.abc\n"
        "sys.argv = ['benchkit', 'run', '--shard', '0/2']\n"
        "seen = []\n"
        "class Spy(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' and not seen:\n"
        "            seen.append(os.environ.get('OMP_WAIT_POLICY'))\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "import benchkit.cli\n"
        "import torch  # noqa: F401\n"
        "print(seen)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['PASSIVE']"


@pytest.mark.parametrize(
    "args", [["train", "--threads", "0"], ["run", "--threads", "-2"], ["sample", "x", "--threads", "0"]]
)
def test_cli_refuses_bad_threads_option(run_cli: CliRunner, args: list[str]) -> None:
    code, _, err = run_cli(args)
    assert code == 2 and "--threads" in err


def test_threads_config_key_is_checked(run_cli: CliRunner, tmp_path: Path) -> None:
    code, _, err = run_cli(["train", "--set", "threads=0", "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 2 and "threads must be >= 1" in err
    code, _, err = run_cli(["train", "--set", 'threads="many"', "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 2 and "threads" in err
