"""Job processes: ``benchkit run`` / ``sweep`` with ``--jobs N`` runs a sweep's jobs in N processes on one host.

The parent starts N copies of the same command (``python -m benchkit ... --jobs 1 --claim-dir DIR``) and waits;
each copy goes through every job of the sweep in the same order and runs the ones it *claims* first (an exclusive
file per job in DIR), so a process that finishes early takes the next job instead of idling. The stage locks of
the file locks of :mod:`benchkit.training` make a tokenizer shared by two jobs train once (the other job waits and
reuses it); the order interleaves tokenizers so that processes started together train different ones first. The parent
then writes
the tables, plots and report once, from every row.

Why on a CPU: the ``tiny`` models' matrix products are small, and two threads in one process use two cores worse
than two one-thread processes do. Measured on an idle 2-core machine (training ``tiny`` width-64 models, 120 steps
at batch 32): alone with 2 threads, VQ + AR + CE 584 images/s and KL + AR + Diffusion Loss 366; the two run at
the same time with 1 thread each, 530 and 302. A six-model version of the default comparison (``benchkit run``)
took 13 min 15 s with ``--jobs 2`` against 14 min 45 s in one process (2026-11-30, idle machine; the last job ran
alone on one core).

Each job runs with the cores divided by N threads and OpenMP's passive wait policy (``benchkit.core.threads``), as a
``--shard`` of N does; a job's numbers depend on its thread count, not on which process ran it or when. Two
costs, which is why one process is the default unless a sweep file sets ``jobs`` (the default comparison sets 2,
for its three training seeds): a different thread count is a different training run, and the cost columns
(images/s, latency) are measured while the other processes run (VQ + AR + CE sampled 164 images/s at batch 64
against 255 alone with 2 threads): take cost figures from ``--jobs 1``. The parent builds the shared feature network
before the processes start (``benchkit.sweeps.commands.prepare_features``), so the features do not depend on N.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchkit.core.errors import BenchkitError, ConfigError
from benchkit.sweeps.sweepfile import Job
from benchkit.training.artifacts import tokenizer_fingerprint


def resolve_jobs(requested: int | None, *, valid_jobs: int, sharded: bool) -> int:
    """How many job processes: ``requested`` (``--jobs``, ``$BENCHKIT_JOBS`` or the sweep file's ``jobs``), default
    1, never more than the valid jobs. With N > 1 a job's cost columns (images/s, latency) are measured next to the
    other job processes, and its numbers come with the cores divided by N threads (see the module docstring)."""
    if requested is None:
        return 1
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {requested!r}")
    if sharded and requested > 1:
        raise ConfigError("--jobs N > 1 and --shard do not combine: run the shards as the N processes instead")
    return min(requested, max(1, valid_jobs))


def claim_order(jobs: Sequence[Job]) -> list[Job]:
    """The valid jobs, every model's first training seed before any later seed (a later seed's evaluation waits
    for the first seed's tuning, so the first seeds should be done early), and within one seed index the tokenizers
    interleaved (first job of each tokenizer, then the second of each, ...), so that processes started together
    begin with different tokenizers instead of waiting on one lock."""
    out: list[Job] = []
    valid = [j for j in jobs if j.cfg is not None]
    for index in sorted({j.cfg.train.seed_index for j in valid if j.cfg is not None}):
        groups: dict[str, list[Job]] = {}
        for job in valid:
            if job.cfg is not None and job.cfg.train.seed_index == index:
                groups.setdefault(tokenizer_fingerprint(job.cfg), []).append(job)
        for k in range(max((len(g) for g in groups.values()), default=0)):
            out += [g[k] for g in groups.values() if k < len(g)]
    return out


def claim(claims: Path, job: Job) -> bool:
    """True for the first process that claims ``job`` in the directory ``claims`` (an exclusive file create), False
    for every later one."""
    name = hashlib.sha256(repr(job.cfg).encode()).hexdigest()[:20]
    try:
        os.close(os.open(claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def run_job_processes(args: Sequence[str], n: int, claims: Path) -> None:
    """Start ``n`` processes of ``python -m benchkit *args --jobs 1 --claim-dir claims`` (an existing directory) and
    wait for all; their logs go to this stderr, their stdout nowhere. One that fails is reported (with its exit
    status) after all have ended. Ctrl-C, SIGTERM or an error here ends them all."""
    cmd = [sys.executable, "-m", "benchkit", *args, "--jobs", "1", "--claim-dir", str(claims), "--no-progress"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL) for _ in range(n)]
    try:
        with _sigterm_raises():
            codes = [p.wait() for p in procs]
    except BaseException:  # do not leave the job processes running
        for p in procs:
            p.terminate()
        raise
    failed = [f"process {i} exited with {c}" for i, c in enumerate(codes) if c != 0]
    if failed:
        raise BenchkitError(
            f"{len(failed)} of {n} job processes failed ({'; '.join(failed)}); their errors are in "
            "the log above, and finished jobs are kept: the same command resumes"
        )


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) in the main thread (as Ctrl-C raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
