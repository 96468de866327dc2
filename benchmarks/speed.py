"""Speed benchmark of the generators and heads at ``tiny``: one run prints one table.

Sections (random tokens stand in for a tokenizer; cfg = 1 throughout):

- ``peak``: fp32 matmul peak (1024^3 ``torch.mm``, median of repeats, at the start and the end of the run; the
  larger is the reference for every "% peak"), a Linear at the tiny models' MLP shape, and the bf16 matmul peak.
- ``train``: per (generator, head, token layout): parameters, training FLOPs per image (forward + backward,
  ``torch.utils.flop_counter``), images/s of full AdamW steps (warm-up, median), achieved FLOP/s, % of peak, and
  the images/s of the same steps under bf16 autocast (``train.precision = "bf16"``) with the bf16 / fp32 ratio.
- ``sample``: ``generate`` images/s against steps (MAR at 4/8/16/64; AR and RQ at their fixed count), in fp32 and
  under bf16 autocast (``sample.precision = "bf16"``).
- ``kv``: ``ar + ce`` with the KV cache on and off at 64 (8x8) and 256 (16x16) tokens, with the speed-up.
- ``diffusion``: ``mar + diffloss`` at 100 / 50 / 25 diffusion sampling steps, plus head-only rows/s.
- ``loops``: ``head.sample`` (and denoiser) calls per ``generate`` at batch 1 and 3 must equal the steps: no
  Python loop over tokens or samples.

Usage: ``python benchmarks/speed.py [--quick] [--no-bf16] [--device cpu|cuda] [--json out.json] [--threads N]``;
the markdown table goes to stdout, progress to stderr. See benchmarks/README.md. The measurements live in
``speed_sections.py``, the sizes and timing helpers in ``speed_timing.py``, the table in ``speed_table.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from typing import Any

import torch
from speed_sections import (
    COMBOS,
    bench_bf16_peak,
    bench_diffusion,
    bench_kv,
    bench_peak,
    bench_sample,
    bench_train,
    build,
    check_loops,
)
from speed_table import Row, markdown
from speed_timing import FULL, QUICK, Plan

from benchkit.metrics.cost import matmul_peak_flops

log = logging.getLogger("benchkit.speed")


def run(device: torch.device, plan: Plan, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Every section in order; returns the table rows and the run's metadata."""
    t_start = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None  # before our own threads add to it
    log.info("peak: 1024^3 fp32 matmul")
    peak0, mlp, mlp_shape = bench_peak(device, plan, plan.train_batch * 64)
    bf16_peak = bench_bf16_peak(device, plan) if plan.bf16 else None
    models = {c: build(*c, device) for c in COMBOS}

    train_rows = []
    for (name, head, layout), model in models.items():
        log.info("train: %s+%s on %s", name, head, layout)
        train_rows.append(bench_train(model, name, head, layout, device, plan))

    sample_rows = []
    with torch.no_grad():
        for (name, head, layout), model in models.items():
            for steps in [k for k in plan.mar_steps if k <= model.seq_len] if name == "mar" else [None]:
                log.info("sample: %s+%s on %s, steps %s", name, head, layout, steps or "fixed")
                row = bench_sample(model, name, head, layout, device, plan, steps, batch=plan.sample_batch)
                sample_rows.append(row)

        kv_rows = bench_kv(models, device, plan)
        diff_rows = bench_diffusion(models[("mar", "diffloss", "8x8x4 cont")], device, plan)
        loop_rows = [check_loops(models[c], *c, device) for c in COMBOS]

    log.info("peak again (end of run)")
    peak1 = matmul_peak_flops(device, size=1024, repeats=plan.peak_repeats)
    peak = max(peak0, peak1)
    rows = [
        Row(
            "peak",
            "matmul fp32",
            "1024^3",
            "torch.mm",
            gflop_per_s=peak / 1e9,
            note=f"median of {plan.peak_repeats}, start {peak0 / 1e9:.1f} / end {peak1 / 1e9:.1f} GFLOP/s",
        ),
        Row("peak", "matmul fp32", mlp_shape, "F.linear", gflop_per_s=mlp / 1e9, note="the tiny models' MLP shape"),
    ]
    if bf16_peak is not None:
        rows.append(
            Row(
                "peak",
                "matmul bf16",
                "1024^3",
                "torch.mm",
                gflop_per_s=bf16_peak / 1e9,
                note=f"{bf16_peak / peak:.2f}x the fp32 peak; not the % peak reference",
            )
        )
    rows += train_rows + sample_rows + kv_rows + diff_rows + loop_rows
    for r in rows:
        if r.gflop_per_s is not None and r.model != "matmul bf16":
            r.peak_frac = r.gflop_per_s * 1e9 / peak
    for r in train_rows:
        r.note = f"target >= 50%: {'met' if (r.peak_frac or 0) >= 0.5 else 'missed'}"
    ratio256 = kv_rows[2].img_per_s / kv_rows[3].img_per_s  # type: ignore[operator]
    meta = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "quick": quick,
        "plan": dataclasses.asdict(plan),
        "loadavg": load_start,  # at the start: at the end it mostly counts this benchmark's own threads
        "seconds": time.perf_counter() - t_start,
        "peak_gflops": peak / 1e9,
        "bf16_peak_gflops": bf16_peak / 1e9 if bf16_peak is not None else None,
        "targets": {
            "train_peak_frac_min": min(r.peak_frac or 0 for r in train_rows),
            "kv_speedup_256": ratio256,
            "kv_target_met": ratio256 >= 5.0,
            "loops_ok": all(r.note.startswith("OK") for r in loop_rows),
            "bf16_train_speedups": {r.model + " " + r.tokens: r.bf16_speedup for r in train_rows},
        },
    }
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats (about a minute)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast timings (about half the time)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the run's metadata as JSON")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = dataclasses.replace(QUICK if args.quick else FULL, bf16=not args.no_bf16)
    rows, meta = run(torch.device(args.device), plan, args.quick)
    t, load = meta["targets"], meta["loadavg"]
    title = (
        f"benchkit speed ({'quick' if args.quick else 'full'}): {meta['device']}, {meta['threads']} threads, "
        f"torch {meta['torch']}, {meta['seconds']:.0f} s"
    )
    if load:
        title += f", load average {load[0]:.1f} on {os.cpu_count()} cores before the run"
        if args.device == "cpu" and load[0] > (os.cpu_count() or 1) * 0.75:
            title += " (busy machine: timings unreliable)"
    summary = (
        f"Targets: training >= 50% of peak: worst {100 * t['train_peak_frac_min']:.1f}%; KV cache >= 5x at 256 "
        f"tokens: {t['kv_speedup_256']:.1f}x; no per-token Python loops: {'yes' if t['loops_ok'] else 'NO'}"
    )
    speedups = [x for x in t["bf16_train_speedups"].values() if x is not None]
    if speedups:
        summary += (
            f"; bf16 training speed-up (issue target >= 1.5x at tiny): {min(speedups):.2f}x - {max(speedups):.2f}x"
        )
    sys.stdout.write(f"**{title}**\n\n{markdown(rows)}\n\n{summary}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
