"""Cost metrics: parameters, FLOPs per call, throughput, latency, peak memory and this machine's matmul peak.

Timings follow the usual benchmarking discipline: warm-up calls first (allocator, caches, lazy init), then the
median of timed repeats; CUDA work is synchronised before every clock read. FLOPs come from PyTorch's own
per-op formulas (``torch.utils.flop_counter``), which count matmul/conv/attention ops (2 FLOPs per multiply-add)
and ignore elementwise work.

Deviations:
- CPU peak memory is the process's peak resident set size (the whole process, libraries and weights included, not
  only tensors). On Linux it is ``VmHWM``, reset through ``/proc/self/clear_refs`` so each measurement starts from
  the memory in use; elsewhere it is ``getrusage`` maxrss, a high-water mark over the process lifetime that cannot
  be reset (``peak_memory_resettable`` says which).
"""

from __future__ import annotations

import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
    shape_wrapper,
)

from benchkit.nn.transformer import Transformer


def count_params(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class FlopCount(TorchDispatchMode):
    """Sums torch's own per-op FLOP formulas (``torch.utils.flop_counter.flop_registry``) over every op dispatched.

    A lean stand-in for ``FlopCounterMode``: no per-module tracking (whose hooks double the cost of counting a
    sampler that runs thousands of small ops), and formulas for the CPU attention kernels, which that registry
    lacks (SDPA on the CPU would otherwise count 0 FLOPs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


_FORMULAS: dict[Any, Callable[..., int]] = {
    **flop_registry,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(
        lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v)
    ),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: shape_wrapper(
        lambda g, q, k, v, *a, **kw: sdpa_backward_flop_count(g, q, k, v)
    ),
}


def flops_per_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)``: matmuls, convolutions and attention (CPU included), 2 per
    multiply-add, elementwise work ignored."""
    with FlopCount() as counter:
        fn(*args, **kwargs)
    return counter.total


def median_seconds(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` timed calls after ``warmup`` untimed ones."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(fn: Callable[[], Any], batch_size: int, warmup: int = 1, repeats: int = 3) -> float:
    """Images per second of ``fn()``, which produces ``batch_size`` images per call (median over repeats)."""
    return batch_size / median_seconds(fn, warmup=warmup, repeats=repeats)


def latency(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5) -> float:
    """Median seconds of ``fn()``, a call that produces one image (batch 1)."""
    return median_seconds(fn, warmup=warmup, repeats=repeats)


_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def peak_memory_resettable(device: torch.device | str = "cpu") -> bool:
    """Whether ``reset_peak_memory`` works here: always on CUDA, on the CPU where Linux's clear_refs is writable."""
    return torch.device(device).type == "cuda" or (_STATUS.is_file() and _CLEAR_REFS.exists())


def peak_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Peak memory since the last ``reset_peak_memory``: torch.cuda.max_memory_allocated on CUDA, else the
    process's peak resident set size (Linux VmHWM; elsewhere maxrss, which never resets)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if _STATUS.is_file():
        found = re.search(r"^VmHWM:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1)) * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS reports bytes, Linux kilobytes


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """``peak_memory_bytes`` in MiB."""
    return peak_memory_bytes(device) / 2**20


def reset_peak_memory(device: torch.device | str = "cpu") -> None:
    """Start a new peak: the CUDA peak counter, or on Linux the process's peak resident set size (VmHWM)."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync()
        torch.cuda.reset_peak_memory_stats(device)
    elif peak_memory_resettable(device):
        try:
            _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
        except OSError:
            pass  # a read-only /proc (some sandboxes): the peak stays the lifetime high-water mark


def matmul_peak_flops(device: torch.device | str = "cpu", size: int = 1024, repeats: int = 5) -> float:
    """Measured fp32 FLOP/s of a size x size matmul on ``device`` (median of repeats): the machine's practical peak."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device)
    b = torch.randn(size, size, generator=g).to(device)
    seconds = median_seconds(lambda: torch.mm(a, b), warmup=2, repeats=repeats)
    return 2.0 * size**3 / seconds


def backbone_params(module: nn.Module) -> int:
    """Parameters of the transformer stacks inside ``module`` (each tensor counted once)."""
    seen: set[int] = set()
    total = 0
    for sub in module.modules():
        if isinstance(sub, Transformer):
            for p in sub.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
    return total
