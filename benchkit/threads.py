"""Thread settings of a benchkit process: how many intra-op threads torch uses and how idle OpenMP threads wait.

- :func:`prepare_openmp` asks OpenMP for a passive wait policy: a worker thread that runs out of work sleeps instead
  of spinning. It has to run before torch is imported (libgomp reads its environment once, when it is loaded), so
  the CLI calls it first thing; a value the user exported is kept. When several processes share the cores (two
  sweep shards, or a sweep next to any other job) spinning workers burn the time slices the other process needs,
  and every barrier waits for a descheduled thread (``benchmarks/shared_cores.py`` measures it). Export
  ``OMP_WAIT_POLICY=ACTIVE`` to keep threads spinning on a machine of your own.
- :func:`resolve_threads` picks the intra-op thread count: an explicit request (``--threads`` / config key
  ``threads``), else ``OMP_NUM_THREADS`` when exported, else the usable cores divided by the number of sweep
  shards (``--shard i/n`` on one host: n processes share the cores), else every usable core (torch's default).
- :func:`apply_threads` sets it with ``torch.set_num_threads``.

Float results on CPU depend on the thread count (reductions and matrix products split their work by thread), so
the same config and seed give bit-identical weights and metrics for the same thread count: run two things that
must match with the same ``--threads``.
"""

from __future__ import annotations

import logging
import os

from benchkit.errors import ConfigError

log = logging.getLogger(__name__)
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def prepare_openmp() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; only effective before torch is imported."""
    os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")


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
    cores = usable_cores()
    if n > cores:
        log.warning("%d threads on %d usable cores: threads will wait for each other; try --threads %d", n, cores,
                    cores)
    log.debug("torch intra-op threads: %d (%s; %s=%s)", torch.get_num_threads(), why, WAIT_POLICY_ENV,
              os.environ.get(WAIT_POLICY_ENV))
    return torch.get_num_threads()
