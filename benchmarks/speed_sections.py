"""The measurements of ``benchmarks/speed.py``: the tiny models it times and one function per table section.

Random tokens stand in for a tokenizer; cfg = 1 throughout. Training and sampling rows are timed in fp32 and, with
``Plan.bf16``, again under the project's bf16 autocast (``benchkit.core.precision.autocast``, what ``train.precision``
and ``sample.precision = "bf16"`` switch on).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from speed_table import Row
from speed_timing import Plan, count_flops, in_precision, sync, timed
from torch import nn

import benchkit.generators
import benchkit.heads  # noqa: F401  (registers the heads)
from benchkit.core.config import SampleSettings
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.core.precision import autocast
from benchkit.core.registry import GENERATORS
from benchkit.generators.ar import ARConfig
from benchkit.metrics.cost import count_params, matmul_peak_flops
from benchkit.training import compute

log = logging.getLogger("benchkit.speed")

NUM_CLASSES = 10
VOCAB = 256  # tiny vq / rq codebook size
SPECS: dict[str, TokenSpec] = {  # token layouts of the tiny tokenizers at 32 x 32 pixels
    "8x8 disc": TokenSpec("discrete", (8, 8), 1, vocab_size=VOCAB),  # vq
    "8x8x4 cont": TokenSpec("continuous", (8, 8), 1, dim=4),  # kl (4 channels)
    "4x4x4 disc": TokenSpec("discrete", (4, 4), 4, vocab_size=VOCAB),  # rq, depth 4
    "4x4x4 cont": TokenSpec("continuous", (4, 4), 4, dim=16),  # rq per-depth code vectors
    "16x16 disc": TokenSpec("discrete", (16, 16), 1, vocab_size=VOCAB),  # the 256-token KV-cache case
}
COMBOS: list[tuple[str, str, str]] = [  # (generator, head, layout) at tiny
    ("ar", "ce", "8x8 disc"),
    ("ar", "diffloss", "8x8x4 cont"),
    ("mar", "ce", "8x8 disc"),
    ("mar", "diffloss", "8x8x4 cont"),
    ("rqtransformer", "ce", "4x4x4 disc"),
    ("rqtransformer", "diffloss", "4x4x4 cont"),
    ("ar", "ce", "4x4x4 disc"),  # the flattened 64-token sequence against the RQ-Transformer
]


def random_batch(spec: TokenSpec, batch: int, device: torch.device, seed: int = 0) -> Batch:
    """Uniform random token ids (discrete) or standard normal vectors (continuous) plus random labels."""
    return compute.random_batch(spec, batch, NUM_CLASSES, device=device, generator=torch.Generator().manual_seed(seed))


def build(name: str, head: str, layout: str, device: torch.device) -> nn.Module:
    """The tiny generator (config defaults) with its head, on ``device``, in eval mode."""
    torch.manual_seed(0)
    return GENERATORS.create(name, spec=SPECS[layout], head=head, num_classes=NUM_CLASSES).to(device).eval()


def generate(
    model: nn.Module, batch: int, device: torch.device, steps: int | None = None, diffusion_steps: int | None = None
) -> Callable[[], Any]:
    """A closure that samples ``batch`` images' tokens with a fixed seed (cfg = 1)."""
    labels = torch.arange(batch, device=device) % NUM_CLASSES
    settings = SampleSettings(steps=steps, diffusion_steps=diffusion_steps)

    def run() -> torch.Tensor:
        g = torch.Generator(device=device).manual_seed(0)
        return model.generate(labels, settings, generator=g)

    return run


def bench_peak(device: torch.device, plan: Plan, rows: int) -> tuple[float, float, str]:
    """(1024^3 matmul FLOP/s, FLOP/s of a Linear [rows, W] -> [rows, 4W] at the tiny AR width W, its shape)."""
    peak = matmul_peak_flops(device, size=1024, repeats=plan.peak_repeats)
    width = ARConfig().width
    hidden = int(width * ARConfig().mlp_ratio)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=g).to(device)
    w = torch.randn(hidden, width, generator=g).to(device)
    mlp_plan = dataclasses.replace(plan, min_repeats=plan.peak_repeats, max_repeats=plan.peak_repeats)
    seconds = timed(lambda: F.linear(x, w), device, mlp_plan, warmup=None)
    return peak, 2.0 * rows * width * hidden / seconds, f"{rows}x{width}x{hidden}"


def bench_bf16_peak(device: torch.device, plan: Plan, size: int = 1024) -> float:
    """FLOP/s of a size^3 ``torch.mm`` in bfloat16 (median of ``plan.peak_repeats``)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device, torch.bfloat16) for _ in range(2))
    peak_plan = dataclasses.replace(plan, min_repeats=plan.peak_repeats, max_repeats=plan.peak_repeats)
    return 2.0 * size**3 / timed(lambda: torch.mm(a, b), device, peak_plan, warmup=None)


def bench_train(model: nn.Module, name: str, head: str, layout: str, device: torch.device, plan: Plan) -> Row:
    """Parameters, FLOPs per image, images/s and achieved FLOP/s of full AdamW steps at ``plan.train_batch``, and
    with ``plan.bf16`` the images/s of the same steps under bf16 autocast (forward in bf16, weights in fp32).

    Step i runs under seed i both when its FLOPs are counted and when it is timed (in either precision), so MAR's
    random mask ratio is the same in all three and the per-step FLOP/s pairs up exactly.
    """
    batch = random_batch(SPECS[layout], plan.train_batch, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(precision: str = "fp32") -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(precision, device):  # the trainer's pattern: autocast forward, backward outside
            loss = model.loss(batch).loss
        loss.backward()
        opt.step()

    def warm_up(precision: str) -> None:  # lazy init, optimizer state, allocator, the precision's kernels
        for i in range(2):
            torch.manual_seed(10_000 + i)
            step(precision)

    def step_seconds(precision: str) -> list[float]:
        times = []
        for i in range(plan.train_steps):
            torch.manual_seed(i)
            sync(device)
            t0 = time.perf_counter()
            step(precision)
            sync(device)
            times.append(time.perf_counter() - t0)
        return times

    warm_up("fp32")
    flops = []
    for i in range(plan.train_steps):
        torch.manual_seed(i)
        flops.append(count_flops(step))
    times = step_seconds("fp32")
    bf16 = None
    if plan.bf16:
        warm_up("bf16")
        bf16 = plan.train_batch / statistics.median(step_seconds("bf16"))
    model.eval()
    return Row(
        "train",
        f"{name}+{head}",
        layout,
        f"B={plan.train_batch}",
        count_params(model),
        gflop_per_img=statistics.mean(flops) / plan.train_batch / 1e9,
        img_per_s=plan.train_batch / statistics.median(times),
        gflop_per_s=statistics.median(f / t for f, t in zip(flops, times, strict=True)) / 1e9,
        bf16_img_per_s=bf16,
    )


def steps_count(model: nn.Module, name: str, steps: int | None) -> int:
    """Generation steps of one ``generate`` call (AR: tokens, RQ: positions, MAR: rounds)."""
    if name == "mar":
        return min(model.cfg.steps, model.seq_len) if steps is None else steps
    if name == "rqtransformer":
        return model.spec.positions
    return model.seq_len


def sample_flops(
    model: nn.Module, head: str, device: torch.device, steps: int | None, diffusion_steps: int | None = None
) -> float:
    """FLOPs of generating one image (batch 1, cfg 1).

    The Diffusion Loss head's share is linear in its sampling steps K, so it is counted at K = 1 and 2 and
    extrapolated, F(K) = F(1) + (K - 1) (F(2) - F(1)), instead of running K denoiser calls under the counter.
    """
    if head != "diffloss":
        return float(count_flops(generate(model, 1, device, steps)))
    f1 = count_flops(generate(model, 1, device, steps, diffusion_steps=1))
    f2 = count_flops(generate(model, 1, device, steps, diffusion_steps=2))
    return float(f1 + ((diffusion_steps or model.head.cfg.sampling_steps) - 1) * (f2 - f1))


def bench_sample(
    model: nn.Module,
    name: str,
    head: str,
    layout: str,
    device: torch.device,
    plan: Plan,
    steps: int | None,
    *,
    batch: int,
    section: str = "sample",
    setting: str = "",
    diffusion_steps: int | None = None,
) -> Row:
    """images/s of ``generate`` at ``batch`` (warm-up at batch <= 2, then the median), FLOPs per image; in the
    ``sample`` section with ``plan.bf16`` also images/s under bf16 autocast."""
    warm = generate(model, min(2, batch), device, steps, diffusion_steps)
    run = generate(model, batch, device, steps, diffusion_steps)
    sec = timed(run, device, plan, warmup=warm)
    bf16 = None
    if plan.bf16 and section == "sample":
        bf16 = batch / timed(in_precision(run, "bf16", device), device, plan, warmup=in_precision(warm, "bf16", device))
    n = steps_count(model, name, steps)
    flops = sample_flops(model, head, device, steps, diffusion_steps)
    note = f"B={batch}; {1e3 * sec / n:.1f} ms/step"
    if head == "diffloss":
        note += f"; {diffusion_steps or model.head.cfg.sampling_steps} diffusion steps"
    return Row(
        section,
        f"{name}+{head}",
        layout,
        setting or f"steps={n}",
        count_params(model),
        flops / 1e9,
        batch / sec,
        flops * batch / sec / 1e9,
        bf16_img_per_s=bf16,
        note=note,
    )


def bench_kv(models: dict[tuple[str, str, str], nn.Module], device: torch.device, plan: Plan) -> list[Row]:
    """``ar+ce`` sampling with the KV cache on and off at 64 (8x8) and 256 (16x16) tokens, with the speed-up."""
    kv_rows: list[Row] = []
    for layout in ("8x8 disc", "16x16 disc"):  # KV cache on / off
        model = models[("ar", "ce", layout)] if layout == "8x8 disc" else build("ar", "ce", layout, device)
        pair = []
        for on in (True, False):
            log.info("kv: ar+ce on %s, cache %s", layout, "on" if on else "off")
            model.use_kv_cache = on
            setting = f"{model.seq_len} tokens, cache {'on' if on else 'off'}"
            pair.append(
                bench_sample(
                    model, "ar", "ce", layout, device, plan, None, batch=plan.kv_batch, section="kv", setting=setting
                )
            )
        model.use_kv_cache = True
        pair[0].note += f"; speed-up {pair[0].img_per_s / pair[1].img_per_s:.1f}x"  # type: ignore[operator]
        kv_rows += pair
    return kv_rows


def bench_diffusion(mar_dl: nn.Module, device: torch.device, plan: Plan) -> list[Row]:
    """``mar+diffloss`` sampling at each of ``plan.diffusion_steps``, with the head alone in rows/s."""
    diff_rows = []
    g = torch.Generator(device=device).manual_seed(0)
    cond = torch.randn(plan.head_rows, mar_dl.cfg.width, generator=g, device=device)

    def head_only(k: int) -> Callable[[], torch.Tensor]:
        return lambda: mar_dl.head.sample(
            cond, generator=torch.Generator(device=device).manual_seed(0), diffusion_steps=k
        )

    for k in plan.diffusion_steps:
        log.info("diffusion: mar+diffloss, %d diffusion steps", k)
        row = bench_sample(
            mar_dl,
            "mar",
            "diffloss",
            "8x8x4 cont",
            device,
            plan,
            None,
            batch=plan.sample_batch,
            section="diffusion",
            setting=f"{k} diffusion steps",
            diffusion_steps=k,
        )
        head_sec = timed(head_only(k), device, plan, warmup=None)
        row.note += f"; head only {plan.head_rows / head_sec:,.0f} rows/s at {plan.head_rows} rows"
        diff_rows.append(row)
    return diff_rows


def count_calls(model: nn.Module, fn: Callable[[], Any]) -> tuple[int, int]:
    """(head.sample calls, denoiser calls) during ``fn()``; the Diffusion Loss sampler calls its denoiser through
    ``forward_modulated`` (the adaLN outputs precomputed), which a forward hook would not see."""
    head = model.head
    net = getattr(head, "net", None)
    net = net if hasattr(net, "forward_modulated") else None  # the ce head's net is a plain Linear
    counts = [0, 0]

    def counting(obj: Any, method: str, i: int) -> None:
        original = getattr(obj, method)

        def call(*args: Any, **kwargs: Any) -> Any:
            counts[i] += 1
            return original(*args, **kwargs)

        setattr(obj, method, call)  # an instance attribute shadows the method

    counting(head, "sample", 0)
    if net is not None:
        counting(net, "forward_modulated", 1)
    try:
        fn()
    finally:
        del head.sample
        if net is not None:
            del net.forward_modulated
    return counts[0], counts[1]


def check_loops(model: nn.Module, name: str, head: str, layout: str, device: torch.device) -> Row:
    """Head calls per ``generate`` at batch 1 and 3 equal the steps (RQ: steps x depth), whatever the batch:
    the samplers loop over steps, never over tokens or samples; the denoiser runs once per diffusion step."""
    diff = 2
    c1, n1 = count_calls(model, generate(model, 1, device, diffusion_steps=diff))
    c3, n3 = count_calls(model, generate(model, 3, device, diffusion_steps=diff))
    n = steps_count(model, name, None)
    expected = n * model.spec.depth if name == "rqtransformer" else n
    ok = c1 == c3 == expected and (head != "diffloss" or n1 == n3 == diff * expected)
    tokens = SPECS[layout].positions * SPECS[layout].depth
    note = f"head.sample calls {c1} (B=1), {c3} (B=3); expected {expected}; a per-token loop at B=3: {3 * tokens}"
    if head == "diffloss":
        note += f"; denoiser calls {n1}, {n3} = calls x {diff} diffusion steps"
    return Row("loops", f"{name}+{head}", layout, "B=1 vs B=3", note=("OK: " if ok else "FAIL: ") + note)
