"""Device choice and torchrun/DDP helpers (gloo on CPU, NCCL on CUDA). Single-process runs need none of it."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from benchkit.errors import ConfigError


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
    return True


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
