"""Sizes, repeat counts and the timing helpers of ``benchmarks/speed.py``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchkit.core.precision import autocast
from benchkit.metrics.cost import flops_per_call


@dataclass(frozen=True)
class Plan:
    """Sizes and repeat counts of one run."""

    train_batch: int
    train_steps: int  # timed (and FLOP-counted) optimizer steps per model
    sample_batch: int
    kv_batch: int
    mar_steps: tuple[int, ...]
    diffusion_steps: tuple[int, ...]
    head_rows: int  # rows of the head-only diffusion timing
    min_repeats: int
    max_repeats: int
    budget_s: float  # stop repeating a measurement after this many seconds (once min_repeats are done)
    peak_repeats: int
    bf16: bool = True  # also time training and sampling under bf16 autocast


FULL = Plan(64, 5, 64, 16, (4, 8, 16, 64), (100, 50, 25), 1024, 2, 5, 4.0, 10)
QUICK = Plan(16, 2, 8, 4, (4, 8, 16, 64), (100, 50, 25), 256, 1, 2, 0.5, 5)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (benchkit's counter: matmuls, convolutions and attention, CPU attention included)."""
    return flops_per_call(fn)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_precision(fn: Callable[[], Any], precision: str, device: torch.device) -> Callable[[], Any]:
    """``fn`` run under the project's autocast for ``precision`` (``benchkit.core.precision.autocast``)."""

    def run() -> Any:
        with autocast(precision, device):
            return fn()

    return run


def timed(fn: Callable[[], Any], device: torch.device, plan: Plan, *, warmup: Callable[[], Any] | None) -> float:
    """Median seconds of ``fn()`` after one warm-up call (of ``warmup``, or of ``fn`` when it is None).

    Repeats at least ``plan.min_repeats`` times and at most ``plan.max_repeats``, stopping early once the timed
    calls have used ``plan.budget_s`` seconds.
    """
    (warmup or fn)()
    sync(device)
    times: list[float] = []
    while len(times) < plan.max_repeats and (len(times) < plan.min_repeats or sum(times) < plan.budget_s):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
