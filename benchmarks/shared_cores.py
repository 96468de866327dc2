"""Processes sharing the cores: training and sampling speed of 1 or 2 concurrent processes, by threads and OpenMP
wait policy.

Usage: ``python benchmarks/shared_cores.py [--steps 30] [--json out.json]``

Each setting starts its processes at once; every process builds the ``tiny`` MAR + Diffusion Loss generator on
random 8x8x4 continuous tokens, runs one warm-up step, times ``--steps`` AdamW steps at batch 64, then one
``generate`` of 16 images (4 MAR steps, 25 diffusion steps). The table gives, per setting, the wall time of the
slowest process and each process's training images/s and sampled images/s. Settings:

- ``1 x 2 threads`` (one process alone, torch's default on 2 cores), with OpenMP's default and passive wait policy;
- ``2 x 2 threads``: two processes, each with 2 threads (what two shards did before ``--threads``), both policies;
- ``2 x 1 thread``: two processes with one thread each (two shards' default on 2 cores).

With the default policy a worker thread that runs out of work spins for a while before it sleeps; when the other
process needs that core the spin is pure loss, and every OpenMP barrier waits for a descheduled thread. The passive
policy (what the benchkit CLI sets) makes idle workers sleep at once. Timings need an otherwise idle machine: the
title shows the load average taken before the run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = [  # (label, processes, threads, OMP_WAIT_POLICY or None for OpenMP's default)
    ("1 x 2 threads, default wait", 1, 2, None),
    ("1 x 2 threads, passive wait", 1, 2, "PASSIVE"),
    ("2 x 2 threads, default wait", 2, 2, None),
    ("2 x 2 threads, passive wait", 2, 2, "PASSIVE"),
    ("2 x 1 thread", 2, 1, "PASSIVE"),
]


def worker(steps: int) -> dict[str, float]:
    """One process's measurement (run in a child: ``--worker``)."""
    import torch

    from benchkit.core.compat import check_combination
    from benchkit.core.config import SampleSettings
    from benchkit.core.interfaces import Batch
    from benchkit.core.registry import GENERATORS

    combo = check_combination("kl", "mar", "diffloss")
    torch.manual_seed(0)
    model = GENERATORS.create("mar", spec=combo.spec, head="diffloss", num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens, labels = torch.randn(64, *combo.spec.token_shape), torch.randint(0, 10, (64,))

    def step() -> None:
        loss = model.loss(Batch(tokens, labels)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train_s = time.perf_counter() - t0
    model.eval()
    settings = SampleSettings(steps=4, diffusion_steps=25)
    t0 = time.perf_counter()
    model.generate(torch.arange(16) % 10, settings, generator=torch.Generator().manual_seed(0))
    sample_s = time.perf_counter() - t0
    return {
        "train_images_per_s": 64 * steps / train_s,
        "sample_images_per_s": 16 / sample_s,
        "threads": torch.get_num_threads(),
    }


def run_setting(processes: int, threads: int, policy: str | None, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", "--steps", str(steps)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed: exit codes {[p.returncode for p in procs]}")
    return {"wall_s": wall, "workers": [json.loads(o.strip().splitlines()[-1]) for o in outs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per process")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps)))
        return
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"processes sharing {os.cpu_count()} cores; load average before the run: {load}\n")
    print("| setting | wall s | train img/s per process | sample img/s per process |\n|---|---|---|---|")
    rows = []
    for label, n, threads, policy in SETTINGS:
        r = run_setting(n, threads, policy, args.steps)
        rows.append({"setting": label, **r})
        tr = " / ".join(f"{w['train_images_per_s']:.0f}" for w in r["workers"])
        sa = " / ".join(f"{w['sample_images_per_s']:.1f}" for w in r["workers"])
        print(f"| {label} | {r['wall_s']:.1f} | {tr} | {sa} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"loadavg": load, "cpu_count": os.cpu_count(), "steps": args.steps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
