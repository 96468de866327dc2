"""benchkit against the official MAR and RQ-Transformer code at two tiny configurations: one run, one table.

Config A (MAR + Diffusion Loss): continuous tokens 8x8 of 16 channels; MAR width 256, 2 + 2 blocks, 4 heads,
buffer 16, dropout 0.1; Diffusion Loss 3 blocks x 256 with learned variance and no x0 clipping, batch_mul 4;
10 classes. Config B (RQ-Transformer + CE): codes 8x8x4 over a vocabulary of 256; width 256, 4 spatial + 2 depth
blocks, 4 heads, dropout 0.1; 10 classes. Row "AR flat" is a raster AR over the same codes flattened to 256
tokens, with 6 blocks so that its backbone has the RQ-Transformer's parameter count.

Training rows time one full step at batch 32 (forward, backward, AdamW lr 1e-4, betas (0.9, 0.95), weight decay
0.02 with no decay on 1-D tensors: the trainer's own optimizer); sampling rows time ``generate`` of 16 images.
Random tokens stand in for a tokenizer. Every figure is the median of timed calls after one warm-up call.

The "official" column holds the medians measured with the official code at the same configurations on a 2-core
machine of the same kind (see benchmarks/README.md); a ratio is only meaningful when this run is also on an idle
2-core machine: the title carries the load average.

The official figures were taken with 2 intra-op threads, the default here. On a loaded machine 2 threads can be
many times slower than 1 (the OpenMP workers wait for each other while descheduled): there, compare versions with
``--threads 1`` and CPU-time A/B runs instead, and keep this table for an idle machine.

Usage: ``python benchmarks/official_configs.py [--repeats N] [--threads N] [--only TEXT] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import benchkit.generators  # noqa: F401  (registers the generators)
import benchkit.heads  # noqa: F401  (registers the heads)
from benchkit.core.config import SampleSettings, TrainConfig
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.metrics.cost import count_params
from benchkit.training import compute
from benchkit.training.trainer import _optimizer

NUM_CLASSES = 10
SPEC_A = TokenSpec("continuous", (8, 8), 1, dim=16)
SPEC_B = TokenSpec("discrete", (8, 8), 4, vocab_size=256)
MAR_A = {"width": 256, "encoder_depth": 2, "decoder_depth": 2, "num_heads": 4, "dropout": 0.1, "buffer_size": 16}
DIFF_A = {"width": 256, "depth": 3, "learn_sigma": True, "clip_x0": False, "batch_mul": 4}
RQT_B = {"width": 256, "spatial_depth": 4, "depth_depth": 2, "num_heads": 4, "dropout": 0.1}
AR_B = {"width": 256, "depth": 6, "num_heads": 4, "dropout": 0.1}
TRAIN_BATCH, SAMPLE_BATCH = 32, 16


@dataclass(frozen=True)
class Work:
    """One row: what is timed and the official median for it (None: no official figure)."""

    name: str
    official_s: float | None
    target: str


WORKS = [
    Work("MAR + DiffLoss train step (A, batch 32)", 0.775, "<= 0.62 s"),
    Work("MAR sample 16, 16 steps, 25 diff. steps, CFG 1 (A)", 1.994, "<= 1.00 s"),
    Work("MAR sample 16, CFG 3.0 linear (A)", 3.255, "<= 1.63 s"),
    Work("RQ-Transformer train step (B, batch 32)", 0.967, "<= 0.68 s"),
    Work("RQ-Transformer sample 16 (B, KV cache)", 1.609, "<= 0.8 s"),
    Work("AR flat 256 codes train step (B layout, batch 32)", None, "-"),
    Work("AR flat 256 codes sample 16 (KV cache)", None, "-"),
]


def build(name: str, spec: TokenSpec, head: str, options: dict[str, Any], head_options: dict[str, Any]) -> nn.Module:
    """A generator of the registry with ``options`` and its head with ``head_options``, seeded."""
    torch.manual_seed(0)
    return GENERATORS.create(name, spec=spec, head=head, num_classes=NUM_CLASSES, head_options=head_options, **options)


def random_batch(spec: TokenSpec, n: int, seed: int = 0) -> Batch:
    """Uniform random ids or standard normal vectors, with random labels."""
    return compute.random_batch(
        spec, n, NUM_CLASSES, device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed)
    )


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step(model: nn.Module, spec: TokenSpec) -> Callable[[], None]:
    """One AdamW step of ``model`` on a fixed random batch of 32 (the trainer's optimizer groups)."""
    opt = _optimizer(model, TrainConfig(lr=1e-4, weight_decay=0.02))
    batch = random_batch(spec, TRAIN_BATCH)

    def step() -> None:
        model.train()  # the same model is also sampled from (eval mode) by other rows
        opt.zero_grad(set_to_none=True)
        model.loss(batch).loss.backward()
        opt.step()

    return step


def sampler(model: nn.Module, settings: SampleSettings) -> Callable[[], torch.Tensor]:
    """``generate`` of 16 images (labels 0..9, 0..5) under ``settings`` with a fixed seed."""
    labels = torch.arange(SAMPLE_BATCH) % NUM_CLASSES

    @torch.no_grad()
    def run() -> torch.Tensor:
        model.eval()
        return model.generate(labels, settings, generator=torch.Generator().manual_seed(0))

    return run


def measure(repeats: int, only: str = "") -> list[tuple[Work, float, int]]:
    """(work, median seconds, parameters) for every row of ``WORKS`` whose name contains ``only``."""
    mar = build("mar", SPEC_A, "diffloss", MAR_A, DIFF_A)
    rqt = build("rqtransformer", SPEC_B, "ce", RQT_B, {})
    ar = build("ar", SPEC_B, "ce", AR_B, {})
    fns = [
        (mar, train_step(mar, SPEC_A)),
        (mar, sampler(mar, SampleSettings(steps=16, diffusion_steps=25, cfg=1.0))),
        (mar, sampler(mar, SampleSettings(steps=16, diffusion_steps=25, cfg=3.0, cfg_schedule="linear"))),
        (rqt, train_step(rqt, SPEC_B)),
        (rqt, sampler(rqt, SampleSettings(cfg=1.0))),
        (ar, train_step(ar, SPEC_B)),
        (ar, sampler(ar, SampleSettings(cfg=1.0))),
    ]
    out = []
    for work, (model, fn) in zip(WORKS, fns, strict=True):
        if only.lower() not in work.name.lower():
            continue
        sec = median_time(fn, repeats)
        print(f"{work.name}: {sec:.3f} s (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
        out.append((work, sec, count_params(model)))
    return out


def table(rows: list[tuple[Work, float, int]], load: tuple[float, float, float], load_end: float) -> str:
    """The markdown table of the run, titled with threads and the load average at its start and end."""
    lines = [
        f"official configurations; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start, {load_end:.2f} at the end "
        "(ratios need an idle machine)",
        "",
        "| work | params | official s | benchkit s | ratio | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for work, sec, params in rows:
        official = "-" if work.official_s is None else f"{work.official_s:.3f}"
        ratio = "-" if work.official_s is None else f"{sec / work.official_s:.2f}"
        lines.append(f"| {work.name} | {params / 1e6:.2f}M | {official} | {sec:.3f} | {ratio} | {work.target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, time every row, print the table (and write JSON on request)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row after the warm-up (median)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the official figures: 2)")
    parser.add_argument("--only", default="", help="time only the rows whose name contains this text")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not any(args.only.lower() in w.name.lower() for w in WORKS):
        parser.error(f"--only {args.only!r} matches no row; rows: {'; '.join(w.name for w in WORKS)}")
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = measure(args.repeats, args.only)
    load_end = os.getloadavg()[0]
    print(table(rows, load, load_end))
    if args.json:
        records = [{"work": w.name, "official_s": w.official_s, "seconds": sec, "params": n} for w, sec, n in rows]
        with open(args.json, "w") as f:
            json.dump(
                {"load": load, "load_end": load_end, "threads": torch.get_num_threads(), "rows": records}, f, indent=1
            )


if __name__ == "__main__":
    main()
