"""Training throughput of several training seeds: one after another in one process against two processes side by
side, and the share of this machine's matmul peak that the default run's training reaches.

    python benchmarks/seed_throughput.py                 # the default run's five models, 3 seeds, 30 steps each
    python benchmarks/seed_throughput.py --steps 10 --models ar+ce

Each model is the default comparison's (``benchkit/configs/sweeps/tiny.toml``), trained with full AdamW steps on
random tokens of its token layout at the run's batch size (the tokenizer is not trained: only its token shape is
used). "sequential" trains the seeds one after another in one process with all threads (what ``benchkit run`` does
with ``--jobs 1``); "2 processes" trains them in two worker processes of one thread each, the seeds dealt out in
turn (``--jobs 2``, what the default run does: ``jobs = 2`` in its sweep file). Both report images/s per seed (the
mean over seeds of batch x steps / seconds) and the wall time of all seeds. The peak is the best of five fp32
``torch.mm`` at 1024^3 with all threads; "% peak" is the counted training FLOPs per second
(``benchkit.training.compute``) over it, for one process with all threads and for the two one-thread processes
together.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

import torch

import benchkit.generators
import benchkit.heads
import benchkit.tokenizers  # noqa: F401  (registers the components)
from benchkit.sweeps.sweepfile import expand, load_sweep
from benchkit.training.artifacts import build_generator
from benchkit.training.checks import check
from benchkit.training.compute import random_batch, train_step_flops

NUM_CLASSES = 10


def _jobs(models: list[str] | None) -> list[Any]:
    cfgs = [j.cfg for j in expand(load_sweep("tiny")) if j.cfg is not None]
    out = []
    for c in cfgs:
        name = f"{c.generator.name}+{c.head.name}"
        if (models is None or name in models) and name not in [n for n, _ in out]:
            out.append((name, c))
    return out


def _train_seconds(cfg: Any, seed: int, steps: int) -> float:
    """Seconds of ``steps`` AdamW steps (after two warm-up steps) of the model of ``cfg`` initialised from ``seed``."""
    combo = check(cfg, include_eval=False)
    torch.manual_seed(seed)
    gen = build_generator(cfg, combo, NUM_CLASSES, torch.device("cpu")).train()
    opt = torch.optim.AdamW(gen.parameters(), lr=cfg.train.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    batches = [
        random_batch(combo.spec, cfg.train.batch_size, NUM_CLASSES, device=torch.device("cpu"), generator=g)
        for _ in range(steps + 2)
    ]
    t0 = 0.0
    for i, batch in enumerate(batches):
        if i == 2:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        gen.loss(batch).loss.backward()
        opt.step()
    return time.perf_counter() - t0


def _worker(models: list[str], seeds: list[int], steps: int) -> None:
    torch.set_num_threads(1)
    out = {}
    for name, cfg in _jobs(models):
        out[name] = [_train_seconds(cfg, s, steps) for s in seeds]
    print(json.dumps(out))


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _peak() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--models", nargs="*", default=None, help="e.g. ar+ce mar+diffloss (default: all five)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    seeds = list(range(a.seeds))
    if a.worker:
        _worker(a.models or [], [int(s) for s in a.worker.split(",")], a.steps)
        return
    jobs = _jobs(a.models)
    threads = torch.get_num_threads()
    peak = _peak()
    cpu = cpu_name()
    print(
        f"CPU: {cpu}; {os.cpu_count()} cores; torch {torch.__version__}, {threads} threads; "
        f"fp32 mm peak {peak / 1e9:.1f} GFLOP/s; {a.seeds} seeds x {a.steps} steps\n"
    )
    print(
        "| model | batch | GFLOP/step | sequential img/s per seed | % peak | 2 processes img/s per seed "
        "| % peak (2 processes together) | throughput ratio (2 processes / sequential) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    names = [n for n, _ in jobs]
    t0 = time.perf_counter()
    seq = {n: [_train_seconds(c, s, a.steps) for s in seeds] for n, c in jobs}
    seq_wall = time.perf_counter() - t0
    halves = [",".join(str(s) for s in seeds[i::2]) for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", h, "--steps", str(a.steps), "--models", *names],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for h in halves
        if h
    ]
    par: dict[str, list[float]] = {n: [] for n in names}
    for p in procs:
        for n, v in json.loads(p.communicate()[0]).items():
            par[n] += v
    par_wall = time.perf_counter() - t0
    for n, cfg in jobs:
        combo = check(cfg, include_eval=False)
        torch.manual_seed(0)
        gen = build_generator(cfg, combo, NUM_CLASSES, torch.device("cpu"))
        flops = train_step_flops(gen, combo.spec, cfg.train.batch_size, NUM_CLASSES)
        bs = cfg.train.batch_size
        seq_ips = sum(bs * a.steps / t for t in seq[n]) / len(seq[n])
        par_ips = sum(bs * a.steps / t for t in par[n]) / len(par[n])
        pct = 100 * flops * seq_ips / bs / peak
        both = 100 * flops * par_ips * min(2, len(seeds)) / bs / peak
        print(
            f"| {n} | {bs} | {flops / 1e9:.2f} | {seq_ips:.0f} | {pct:.1f} | {par_ips:.0f} | {both:.1f} | "
            f"{par_ips * min(2, len(seeds)) / seq_ips:.2f} |"
        )
    print(
        f"\nall models: sequential {seq_wall:.1f} s wall, 2 processes {par_wall:.1f} s wall "
        f"(ratio {seq_wall / par_wall:.2f}; the processes include their start-up)"
    )


if __name__ == "__main__":
    main()
