"""``benchkit sweep FILE --slurm N``: the rendered sbatch array script, run with a stand-in for benchkit."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchkit.cli import app
from benchkit.core.errors import ConfigError
from benchkit.sweeps.slurm import render_sbatch

SWEEP = Path(__file__).parents[2] / "benchkit" / "configs" / "sweeps" / "tiny.toml"


def test_rendered_script_runs_its_array_tasks_shard(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "sweep",
            str(SWEEP),
            "--slurm",
            "4",
            "--set",
            "train.steps=100",
            "--set",
            'name="my run"',
            "-o",
            str(tmp_path / "out"),
            "--slurm-opt",
            "partition=gpu",
        ],
    )
    assert res.exit_code == 0, res.output
    script = res.output
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --array=0-3" in lines and "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --gpus-per-task=1" in lines
    assert f"#SBATCH --output={tmp_path / 'out'}/slurm/%x-%A_%a.out" in lines
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    # run it as array task 2 with a benchkit that records its arguments
    fake = tmp_path / "bin" / "benchkit"
    fake.parent.mkdir()
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "SLURM_ARRAY_TASK_ID": "2",
        "ARGS_OUT": str(tmp_path / "args.txt"),
    }
    out = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    args = (tmp_path / "args.txt").read_text().splitlines()
    assert args == [
        "sweep",
        str(SWEEP),
        "--shard",
        "2/4",
        "--no-progress",
        "--set",
        "train.steps=100",
        "--set",
        'name="my run"',
        "--out-dir",
        str(tmp_path / "out"),
    ]


def test_multi_gpu_tasks_use_torchrun_and_bad_inputs_are_refused() -> None:
    script = render_sbatch("s.toml", 2, gpus=4, cpus=32)
    assert (
        "torchrun --standalone --nproc_per_node=4 -m benchkit sweep s.toml --shard ${SLURM_ARRAY_TASK_ID}/2" in script
    )
    assert "export OMP_NUM_THREADS=8" in script
    with pytest.raises(ConfigError, match="number of array tasks >= 1, got 0"):
        render_sbatch("s.toml", 0)
    with pytest.raises(ConfigError, match="must look like KEY=VALUE"):
        render_sbatch("s.toml", 2, extra=["partition"])
