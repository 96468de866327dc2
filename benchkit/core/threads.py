"""Thread settings of a benchkit process: how many intra-op threads torch uses and how idle OpenMP threads wait.

- :func:`prepare_openmp` asks OpenMP for a passive wait policy (a worker thread that runs out of work sleeps instead
  of spinning) when the command runs a sweep shard (``--shard i/n``, n > 1) or is one job process of ``--jobs N``,
  i.e. when several processes are expected to share the cores: spinning workers then burn the time slices the other
  process needs, and every barrier waits for a descheduled thread (``benchmarks/shared_cores.py`` measures it). A
  process alone keeps OpenMP's default: on an idle 2-core machine the passive policy made ``ar`` + ``ce`` sampling
  (batch 64) 2x slower, because every small parallel region then pays for waking its threads. It has to run before
  torch is imported (libgomp reads its environment once, when it is loaded), so the CLI calls it first thing; a
  value the user exported is always kept (export ``OMP_WAIT_POLICY=PASSIVE`` next to other heavy jobs).
- :func:`resolve_threads` picks the intra-op thread count: an explicit request (``--threads`` / config key
  ``threads``), else ``OMP_NUM_THREADS`` when exported, else the usable cores divided by the number of sweep
  shards (``--shard i/n`` on one host: n processes share the cores), else every usable core (torch's default).
- :func:`apply_threads` sets it with ``torch.set_num_threads``, and the same count for the BLAS libraries numpy and
  scipy carry (OpenBLAS, through ``threadpoolctl``), which torch's setting does not reach: they otherwise start one
  thread per core in every process, so two one-thread job processes ran four spinning BLAS threads on two cores
  whenever they computed KID, FID or eigenvalues. Next to two other one-thread processes (load average 2.5), 40
  FIDs of 100 samples took 1.36 s with numpy's default threads and 0.34 s with one, clean-fid's KID of 500 samples
  3.39 s and 1.85 s.

Float results on CPU depend on the thread count (reductions and matrix products split their work by thread), so
the same config and seed give bit-identical weights and metrics for the same thread count: run two things that
must match with the same ``--threads``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from benchkit.core.errors import ConfigError

log = logging.getLogger(__name__)
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
JOBS_ENV = "BENCHKIT_JOBS"  # gives ``--jobs`` its default (``BENCHKIT_JOBS=1``: every sweep in one process)


def prepare_openmp(argv: Sequence[str] | None = None) -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when ``argv`` (default: ``sys.argv``) runs a shard of n > 1 or is one job
    process of ``--jobs N`` (it has ``--claim-dir``), and the user chose no policy; only effective before torch is
    imported."""
    argv = sys.argv if argv is None else argv
    shares_cores = shard_count(argv) > 1 or any(a == "--claim-dir" or a.startswith("--claim-dir=") for a in argv)
    if WAIT_POLICY_ENV not in os.environ and shares_cores:
        os.environ[WAIT_POLICY_ENV] = "PASSIVE"


def shard_count(argv: Sequence[str]) -> int:
    """n of a ``--shard i/n`` (or ``--shard=i/n``) in a command line; 1 when there is none or it is malformed (the
    command's own parsing reports that)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--shard="):
            text: str | None = arg[len("--shard=") :]
        else:
            text = argv[i + 1] if arg == "--shard" and i + 1 < len(argv) else None
        if text is not None:
            n = text.partition("/")[2]
            return int(n) if n.isdigit() and int(n) > 0 else 1
    return 1


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM or taskset allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def _env_threads() -> int | None:
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def resolve_threads(requested: int | None, *, shards: int = 1) -> tuple[int, str]:
    """(intra-op thread count, why): see the module docstring for the order."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {requested!r}")
        return requested, "requested"
    env = _env_threads()
    if env is not None:
        return env, "OMP_NUM_THREADS"
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    cores = usable_cores()
    if shards > 1:
        return max(1, cores // shards), f"{cores} cores / {shards} shards"
    return cores, "every usable core"


def apply_threads(requested: int | None, *, shards: int = 1) -> int:
    """Set torch's intra-op threads as :func:`resolve_threads` decides (every time, so that one sweep job's setting
    does not carry over to the next); returns the count now in use."""
    import torch

    n, why = resolve_threads(requested, shards=shards)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    limit_blas_threads(n)
    cores = usable_cores()
    if n > cores:
        log.warning(
            "%d threads on %d usable cores: threads will wait for each other; try --threads %d", n, cores, cores
        )
    log.debug(
        "torch intra-op threads: %d (%s; %s=%s)",
        torch.get_num_threads(),
        why,
        WAIT_POLICY_ENV,
        os.environ.get(WAIT_POLICY_ENV),
    )
    return torch.get_num_threads()


def limit_blas_threads(n: int) -> None:
    """Run numpy's and scipy's BLAS (loaded here if they are not yet) with ``n`` threads, as torch runs."""
    import numpy  # noqa: F401  (loads numpy's OpenBLAS)
    import scipy.linalg  # noqa: F401  (loads scipy's own copy)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")
