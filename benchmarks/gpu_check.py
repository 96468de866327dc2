"""GPU check of the paper-size generators: bf16 training images/s, sampling seconds per image, peak memory.

For MAR-B (``mar-b``), the AR baseline at MAR-L size (``ar-l``) and RQ-Transformer 480M (``rqt-480m``), with random
tokens of the presets' layouts standing in for the tokenizers (16x16x16 KL latents, 8x8x4 codes of 16384):

- training: ``--train-batch`` images per step (default 64, MAR's per-GPU batch), AdamW (fused on CUDA), bf16
  autocast, gradient clipping; images/s over ``--train-steps`` timed steps after two warm-up steps;
- sampling: ``--sample-batch`` images (default 256) with CFG (the preset's scale and schedule; the RQ-Transformer
  has no CFG in the paper and is sampled at cfg 1), 64 MAR steps and 100 diffusion steps (``--mar-steps``,
  ``--diffusion-steps``), bf16 autocast; seconds per image of one timed batch after a warm-up batch of 8 images;
- peak memory: ``torch.cuda.max_memory_allocated`` (on CPU the process's peak RSS, which cannot be reset).

``--small`` shrinks every model, token grid and batch so that the whole check runs on a CPU in a few minutes: it
proves the script works, its figures mean nothing. Under 8 minutes on one modern GPU at full size.
Usage: ``python benchmarks/gpu_check.py [--small] [--device cuda]``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

import torch

import benchkit.generators
import benchkit.heads  # noqa: F401  (registers the components)
from benchkit.core.config import SampleSettings, resolve
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.core.precision import autocast
from benchkit.core.registry import GENERATORS
from benchkit.metrics.cost import count_params, peak_memory_mb, reset_peak_memory
from benchkit.training.checks import check

PRESETS = ("mar-b", "ar-l", "rqt-480m")
SMALL_GENERATOR = {
    "mar": {"width": 64, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "buffer_size": 4},
    "ar": {"width": 64, "depth": 2, "num_heads": 2},
    "rqtransformer": {"width": 64, "spatial_depth": 1, "depth_depth": 1, "num_heads": 2},
}
SMALL_HEAD = {"diffloss": {"width": 64, "depth": 1}, "ce": {}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(name: str, small: bool, device: torch.device) -> tuple[Any, TokenSpec, Any]:
    """The preset's generator with its head (shrunk with ``small``), its token layout and its config."""
    cfg = resolve(name)
    spec = check(cfg, include_eval=False).spec
    gen_opts, head_opts = dict(cfg.generator.options), dict(cfg.head.options)
    if small:
        gen_opts.update(SMALL_GENERATOR[cfg.generator.name])
        head_opts.update(SMALL_HEAD[cfg.head.name])
        spec = dataclasses.replace(spec, grid=(4, 4), vocab_size=64 if spec.vocab_size else None)
    torch.manual_seed(0)
    gen = GENERATORS.create(
        cfg.generator.name, spec=spec, head=cfg.head.name, head_options=head_opts, num_classes=1000, **gen_opts
    ).to(device)
    return gen, spec, cfg


def random_batch(spec: TokenSpec, n: int, device: torch.device) -> Batch:
    shape = (n, *spec.grid) + ((spec.depth,) if spec.depth > 1 else ())
    g = torch.Generator().manual_seed(0)
    tokens = (
        torch.randint(0, int(spec.vocab_size or 0), shape, generator=g)
        if spec.kind == "discrete"
        else torch.randn(*shape, int(spec.dim or 0), generator=g)
    )
    return Batch(tokens.to(device), torch.randint(0, 1000, (n,), generator=g).to(device))


def train_rate(gen: Any, spec: TokenSpec, batch_size: int, steps: int, device: torch.device) -> float:
    """Images/s of bf16 AdamW steps (two warm-up steps first)."""
    batch = random_batch(spec, batch_size, device)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda" or None)
    gen.train()
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            t0 = time.perf_counter()
        with autocast("bf16", device):
            loss = gen.loss(batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 3.0)
        opt.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def sample_seconds(
    gen: Any, cfg: Any, batch_size: int, steps: int, diffusion_steps: int, device: torch.device
) -> float:
    """Seconds per image of one bf16 ``generate`` batch (after an 8-image warm-up)."""
    gen.eval()
    mar_steps = min(steps, gen.seq_len) if cfg.generator.name == "mar" else None  # --small has 16 tokens
    settings = SampleSettings(
        steps=mar_steps,
        cfg=cfg.sample.cfg,
        cfg_schedule=cfg.sample.cfg_schedule,
        diffusion_steps=diffusion_steps if cfg.head.name == "diffloss" else None,
    )
    with autocast("bf16", device):
        gen.generate(
            torch.arange(min(8, batch_size), device=device),
            settings,
            generator=torch.Generator(device=device).manual_seed(0),
        )
        _sync(device)
        t0 = time.perf_counter()
        gen.generate(
            torch.arange(batch_size, device=device) % 1000,
            settings,
            generator=torch.Generator(device=device).manual_seed(1),
        )
        _sync(device)
    return (time.perf_counter() - t0) / batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny models and batches: a CPU run that proves the script")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-batch", type=int, default=None)
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--sample-batch", type=int, default=None)
    p.add_argument("--mar-steps", type=int, default=None)
    p.add_argument("--diffusion-steps", type=int, default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    train_batch = a.train_batch or (8 if a.small else 64)
    train_steps = a.train_steps or (1 if a.small else 10)
    sample_batch = a.sample_batch or (2 if a.small else 256)
    mar_steps, diff_steps = a.mar_steps or (4 if a.small else 64), a.diffusion_steps or (5 if a.small else 100)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    size_note = "SMALL (figures meaningless)" if a.small else "full size"
    print(f"device: {name}; torch {torch.__version__}; bf16 autocast; {size_note}")
    print(
        f"train batch {train_batch}, sample batch {sample_batch}, MAR steps {mar_steps}, {diff_steps} diffusion steps\n"
    )
    print("| model | params | train img/s | train peak MB | sample s/img | sample peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for preset in PRESETS:
        gen, spec, cfg = build(preset, a.small, device)
        reset_peak_memory(device)
        rate = train_rate(gen, spec, train_batch, train_steps, device)
        train_mem = peak_memory_mb(device)
        reset_peak_memory(device)
        spi = sample_seconds(gen, cfg, sample_batch, mar_steps, diff_steps, device)
        print(
            f"| {preset} | {count_params(gen) / 1e6:.1f} M | {rate:.1f} | {train_mem:.0f} | {spi:.4f} | "
            f"{peak_memory_mb(device):.0f} |",
            flush=True,
        )
        del gen
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
