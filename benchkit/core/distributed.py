"""Device choice and torchrun/DDP helpers (gloo on CPU, NCCL on CUDA). Single-process runs need none of it.

Every helper is a no-op (or the identity) in a single process, and a collective that every rank must call in the
same order under torchrun.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from filelock import FileLock

from benchkit.core.errors import ConfigError

T = TypeVar("T")


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu; explicit names are checked for availability."""
    valid = ("auto", "cpu", "cuda", "mps")
    if name not in valid:
        raise ConfigError(f"unknown device {name!r}; valid: {', '.join(valid)}")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available; valid here: auto, cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' requested but MPS is not available; valid here: auto, cpu")
    if name == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def world_size() -> int:
    """Number of processes (1 outside torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0."""
    return rank() == 0


def init_distributed(device: torch.device) -> bool:
    """Start the process group when launched by torchrun; returns True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        # A rank that exits with its process group alive can abort in the backend's thread teardown
        # ("terminate called without an active exception", SIGABRT) when it finishes before the others.
        atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when single-process)."""
    if dist.is_initialized():
        dist.barrier()


def gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0 (identity when single-process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (so all ranks take the same branch); identity when single-process."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_floats(values: dict[str, float]) -> dict[str, float]:
    """Per-key means over ranks of rank 0's keys (one broadcast, one all-reduce); identity when single-process."""
    if not _active():
        return dict(values)
    keys = broadcast_object(sorted(values))
    t = torch.tensor([float(values.get(k, float("nan"))) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist())}


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any rank."""
    if not _active():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@contextmanager
def stage_lock(path: Path) -> Iterator[None]:
    """Hold the file lock ``path`` around a stage, safely under torchrun.

    Single-process: a plain inter-process file lock (e.g. two sweep shards training the same tokenizer).
    Under torchrun only rank 0 takes the file lock; the other ranks wait at a barrier until it holds it and again
    before it is released. Were every rank to lock the file, rank 1 would block on it while rank 0, holding it,
    waits for rank 1 in the first all-reduce: a deadlock.
    """
    if not _active():
        with FileLock(str(path)):
            yield
        return
    lock = FileLock(str(path)) if is_main() else None
    if lock is not None:
        lock.acquire()
    try:
        barrier()  # nobody enters before rank 0 holds the lock
        yield
        barrier()  # rank 0 keeps the lock until every rank is done with the stage's files
    finally:
        if lock is not None:
            lock.release()
