"""Training-step speed of fp32 against bf16 (and fp16) autocast at the ``tiny`` component sizes.

Prints one markdown table: the matmul peak of each precision (1024^3 ``torch.mm``) and, per (generator, head),
the median seconds of a full training step (autocast forward, backward, AdamW) and the speed-up over fp32.
Random tokens stand in for a tokenizer. Times depend on the load of the machine: the load average is printed.

Usage: ``python benchmarks/precision.py [--precisions fp32,bf16] [--repeats 5] [--batch 64] [--threads N]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import benchkit.generators
import benchkit.heads  # noqa: F401  (registers the components)
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.core.precision import autocast
from benchkit.core.registry import GENERATORS

SPECS = {"ce": TokenSpec("discrete", (8, 8), 1, vocab_size=256), "diffloss": TokenSpec("continuous", (8, 8), 1, dim=4)}
COMBOS = [("ar", "ce"), ("ar", "diffloss"), ("mar", "diffloss")]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_seconds(precision: str, size: int = 1024, repeats: int = 5) -> float:
    """Median seconds of one size^3 matmul in ``precision``."""
    a = torch.randn(size, size, dtype=DTYPES[precision])
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        torch.mm(a, a)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def step_seconds(gen: str, head: str, precision: str, batch: int, repeats: int) -> float:
    """Median seconds of one training step of the tiny ``gen`` + ``head`` under ``precision`` autocast."""
    torch.manual_seed(0)
    spec = SPECS[head]
    model = GENERATORS.create(gen, spec=spec, head=head, num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    tokens = (
        torch.randint(0, 256, (batch, 8, 8), generator=g)
        if spec.kind == "discrete"
        else torch.randn(batch, 8, 8, 4, generator=g)
    )
    data = Batch(tokens, torch.randint(0, 10, (batch,), generator=g))
    times = []
    for i in range(repeats + 2):  # two warm-up steps
        torch.manual_seed(i)
        t0 = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            loss = model.loss(data).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    precs = a.precisions.split(",")
    print(f"load average before: {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()}, batch {a.batch}\n")
    print("| work | " + " | ".join(precs) + " | " + " | ".join(f"{q} speed-up" for q in precs[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(precs) - 1))
    mm = {q: matmul_seconds(q) for q in precs}
    gf = {q: 2 * 1024**3 / mm[q] / 1e9 for q in precs}
    print(
        "| matmul 1024^3 (GFLOP/s) | "
        + " | ".join(f"{gf[q]:.0f}" for q in precs)
        + " | "
        + " | ".join(f"{gf[q] / gf[precs[0]]:.2f}x" for q in precs[1:])
        + " |"
    )
    for gen, head in COMBOS:
        s = {q: step_seconds(gen, head, q, a.batch, a.repeats) for q in precs}
        print(
            f"| {gen}+{head} train step (s) | "
            + " | ".join(f"{s[q]:.3f}" for q in precs)
            + " | "
            + " | ".join(f"{s[precs[0]] / s[q]:.2f}x" for q in precs[1:])
            + " |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
