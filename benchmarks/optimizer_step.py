"""The trainer's per-step update on a CPU: AdamW's default path against its fused kernel, on the default run's models.

    python benchmarks/optimizer_step.py               # the five models of the default run, 1 thread, 5 repeats
    python benchmarks/optimizer_step.py --threads 2 --steps 20 --models ar+ce

Each model is the default comparison's (``benchkit/configs/sweeps/tiny.toml``) at its batch size, on random tokens of
its token layout. One step is what ``benchkit.training.trainer`` does: forward and backward, gradient clipping at
1.0, the AdamW step, the EMA update. "update" is the time from the end of the backward pass to the end of the EMA
update, the part the optimizer choice changes. The two variants alternate, ``--repeats`` times each; the table gives
the median over repeats of the mean per step. Times on a shared machine vary by 10-20% run to run: compare within
one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # seed_throughput sits beside this script
from seed_throughput import NUM_CLASSES, _jobs, cpu_name

import benchkit.generators
import benchkit.heads
import benchkit.tokenizers  # noqa: F401  (registers the components)
from benchkit.training.artifacts import build_generator
from benchkit.training.checks import check
from benchkit.training.compute import random_batch
from benchkit.training.ema import EMA


def _step_ms(cfg: Any, fused: bool, steps: int) -> tuple[float, float, int]:
    """(forward + backward ms, update ms, parameter tensors) per step, the mean over ``steps`` after 3 warm-up."""
    combo = check(cfg, include_eval=False)
    torch.manual_seed(0)
    gen = build_generator(cfg, combo, NUM_CLASSES, torch.device("cpu")).train()
    opt = torch.optim.AdamW(gen.parameters(), lr=cfg.train.lr, betas=(0.9, 0.95), fused=fused or None)
    ema = EMA(gen, 0.99)
    g = torch.Generator().manual_seed(0)
    batch = random_batch(combo.spec, cfg.train.batch_size, NUM_CLASSES, device=torch.device("cpu"), generator=g)
    fwd = upd = 0.0
    for i in range(steps + 3):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        gen.loss(batch).loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
        opt.step()
        ema.update(gen)
        t2 = time.perf_counter()
        if i >= 3:
            fwd, upd = fwd + t1 - t0, upd + t2 - t1
    return 1e3 * fwd / steps, 1e3 * upd / steps, sum(1 for _ in gen.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="*", default=None, help="e.g. ar+ce rqtransformer+ce (default: all five)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; torch {torch.__version__}, {a.threads} thread(s); ")
    print(f"{a.steps} steps x {a.repeats} repeats per variant, medians\n")
    print("| model | tensors | fwd+bwd ms | update ms, default | update ms, fused | update saved ms | step ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, cfg in _jobs(a.models):
        runs: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
        for _ in range(a.repeats):
            for fused in (False, True):
                runs[fused].append(_step_ms(cfg, fused, a.steps))
        fwd = statistics.median(r[0] for r in runs[False] + runs[True])
        old, new = (statistics.median(r[1] for r in runs[f]) for f in (False, True))
        print(
            f"| {name} | {runs[False][0][2]} | {fwd:.1f} | {old:.2f} | {new:.2f} | {old - new:.2f} | "
            f"{(fwd + old) / (fwd + new):.3f} |"
        )


if __name__ == "__main__":
    main()
