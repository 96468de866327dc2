"""Tokenizer training steps and reconstructions in NCHW against channels-last (NHWC) memory layout, on CPU.

``benchkit.training.artifacts.build_tokenizer`` puts a tokenizer's conv weights in channels-last on CPU; this
prints, in one run, the time per training step (forward, backward, AdamW) and per reconstruction batch of each
`tiny` tokenizer in both layouts, alternating the two so that machine noise hits both alike, with the ratio, and
the largest difference of the reconstructions (the layouts compute the same convolutions in another order).

    python benchmarks/tokenizer_layout.py [--threads 1] [--repeats 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from benchkit.core.config import resolve
from benchkit.core.registry import TOKENIZERS

TOKENIZER_NAMES = ("vq", "rq", "kl")
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def build(name: str, layout: str) -> nn.Module:
    """The `tiny` tokenizer ``name`` (seed 0) with its weights in ``layout`` (a key of LAYOUTS)."""
    cfg = resolve("tiny", None, [f'tokenizer.name="{name}"'])
    torch.manual_seed(0)
    module = TOKENIZERS.create(name, image_size=cfg.data.image_size, **cfg.tokenizer.options)
    return module.to(memory_format=LAYOUTS[layout])


def step_seconds(module: nn.Module, images: torch.Tensor, steps: int) -> float:
    """Mean seconds of one training step (loss, backward, AdamW) over ``steps`` steps after two warm-up steps."""
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.train()
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = module.loss(images).loss  # type: ignore[operator]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def recon_seconds(module: nn.Module, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds for one reconstruction of ``images`` (eval mode) and the reconstruction."""
    module.eval()
    module.reconstruct(images)  # type: ignore[operator]  # warm-up
    start = time.perf_counter()
    out = module.reconstruct(images)  # type: ignore[operator]
    return time.perf_counter() - start, out


def measure(name: str, repeats: int, steps: int, batch: int) -> dict[str, float]:
    """Median step and reconstruction seconds per layout, their NCHW / NHWC ratios, and the largest
    reconstruction difference between the layouts (same weights)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, generator=g) * 2 - 1
    base = build(name, "NCHW")
    modules = {"NCHW": base, "NHWC": copy.deepcopy(base).to(memory_format=torch.channels_last)}
    times: dict[str, list[float]] = {f"{k}_{layout}": [] for k in ("step", "recon") for layout in LAYOUTS}
    recons: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for layout in LAYOUTS:
            t, recons[layout] = recon_seconds(modules[layout], images)
            times[f"recon_{layout}"].append(t)
    diff = float((recons["NCHW"] - recons["NHWC"]).abs().max())
    for _ in range(repeats):
        for layout in LAYOUTS:
            times[f"step_{layout}"].append(step_seconds(copy.deepcopy(modules[layout]), images, steps))
    out = {k: statistics.median(v) for k, v in times.items()}
    out["step_ratio"] = out["step_NCHW"] / out["step_NHWC"]
    out["recon_ratio"] = out["recon_NCHW"] / out["recon_NHWC"]
    out["recon_max_abs_diff"] = diff
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a default-run job process)")
    p.add_argument("--repeats", type=int, default=5, help="alternating repeats per layout (default 5)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per repeat (default 10)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default 64, tiny's tokenizer batch)")
    a = p.parse_args(argv)
    if min(a.threads, a.repeats, a.steps, a.batch) < 1:
        p.error("--threads, --repeats, --steps and --batch must be >= 1")
    torch.set_num_threads(a.threads)
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} thread(s), "
        f"batch {a.batch}, median of {a.repeats} alternating repeats"
    )
    print("| tokenizer | step NCHW ms | step NHWC ms | ratio | recon NCHW ms | recon NHWC ms | ratio | max diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in TOKENIZER_NAMES:
        m = measure(name, a.repeats, a.steps, a.batch)
        print(
            f"| {name} | {m['step_NCHW'] * 1e3:.1f} | {m['step_NHWC'] * 1e3:.1f} | {m['step_ratio']:.2f} | "
            f"{m['recon_NCHW'] * 1e3:.1f} | {m['recon_NHWC'] * 1e3:.1f} | {m['recon_ratio']:.2f} | "
            f"{m['recon_max_abs_diff']:.1e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
