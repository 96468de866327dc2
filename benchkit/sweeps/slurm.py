"""A Slurm job-array script for a sweep: array task i of N runs ``benchkit sweep FILE --shard i/N``.

Shards share the results directory (each job's stages run under file locks, finished runs are skipped), so the
array can be resubmitted after a failure and only unfinished jobs run again. The script is printed, never
submitted: review it, then ``sbatch`` it. Each array task gets ``gpus`` GPUs on one node; one-GPU tasks are the
usual choice for sweeps of small models, a multi-GPU task runs its shard under ``torchrun``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from benchkit.core.errors import ConfigError


def render_sbatch(
    sweep_file: str | Path,
    shards: int,
    *,
    sets: Sequence[str] = (),
    out_dir: str | Path | None = None,
    preset: str | None = None,
    gpus: int = 1,
    cpus: int = 8,
    time: str = "24:00:00",
    extra: Sequence[str] = (),
) -> str:
    """The sbatch script: ``#SBATCH`` header (``extra`` adds ``--KEY=VALUE`` lines), then the shard's command."""
    if shards < 1:
        raise ConfigError(f"--slurm needs a number of array tasks >= 1, got {shards}")
    if gpus < 0 or cpus < 1:
        raise ConfigError(f"gpus must be >= 0 and cpus >= 1, got {gpus} and {cpus}")
    for e in extra:
        if "=" not in e or not e.split("=", 1)[0].strip():
            raise ConfigError(f"Slurm option {e!r} must look like KEY=VALUE, e.g. partition=gpu")
    name = Path(sweep_file).stem
    logs = Path(out_dir or "results") / "slurm"
    header = [
        "#!/bin/bash",
        f"# submit with: mkdir -p {shlex.quote(str(logs))} && sbatch THIS_FILE"
        "  (Slurm opens --output before the job runs)",
        f"#SBATCH --job-name=benchkit-{name}",
        f"#SBATCH --array=0-{shards - 1}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --time={time}",
        f"#SBATCH --output={logs}/%x-%A_%a.out",
    ]
    if gpus:
        header.append(f"#SBATCH --gpus-per-task={gpus}")
    header += [f"#SBATCH --{e.split('=', 1)[0].strip()}={e.split('=', 1)[1].strip()}" for e in extra]
    args = ["sweep", str(sweep_file), "--shard", f"${{SLURM_ARRAY_TASK_ID}}/{shards}", "--no-progress"]
    for s in sets:
        args += ["--set", s]
    if out_dir is not None:
        args += ["--out-dir", str(out_dir)]
    if preset is not None:
        args += ["--preset", preset]
    quoted = " ".join(a if a.startswith("${SLURM") else shlex.quote(a) for a in args)
    launcher = f"torchrun --standalone --nproc_per_node={gpus} -m benchkit" if gpus > 1 else "benchkit"
    body = [
        "set -euo pipefail",
        f"export OMP_NUM_THREADS={max(1, cpus // max(1, gpus))}",
        f'echo "array task ${{SLURM_ARRAY_TASK_ID}} of {shards} on $(hostname)"',
        f"{launcher} {quoted}",
    ]
    return "\n".join(header + [""] + body) + "\n"
