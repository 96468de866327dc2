"""Speed benchmark of the generators and heads at ``tiny``: one run prints one table.

Sections (random tokens stand in for a tokenizer; cfg = 1 throughout):

- ``peak``: fp32 matmul peak (1024^3 ``torch.mm``, median of repeats, at the start and the end of the run; the
  larger is the reference for every "% peak") and a Linear at the tiny models' MLP shape.
- ``train``: per (generator, head, token layout): parameters, training FLOPs per image (forward + backward,
  ``torch.utils.flop_counter``), images/s of full AdamW steps (warm-up, median), achieved FLOP/s, % of peak.
- ``sample``: ``generate`` images/s against steps (MAR at 4/8/16/64; AR and RQ at their fixed count).
- ``kv``: ``ar + ce`` with the KV cache on and off at 64 (8x8) and 256 (16x16) tokens, with the speed-up.
- ``diffusion``: ``mar + diffloss`` at 100 / 50 / 25 diffusion sampling steps, plus head-only rows/s.
- ``loops``: ``head.sample`` (and denoiser) calls per ``generate`` at batch 1 and 3 must equal the steps: no
  Python loop over tokens or samples.

Usage: ``python benchmarks/speed.py [--quick] [--device cpu|cuda] [--json out.json] [--threads N]``; the
markdown table goes to stdout, progress to stderr. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import benchkit.generators
import benchkit.heads  # noqa: F401  (registers the heads)
import torch
import torch.nn.functional as F
from benchkit.generators.ar import ARConfig
from torch import nn

from benchkit import compute
from benchkit.interfaces import Batch, TokenSpec
from benchkit.metrics.cost import count_params, flops_per_call, matmul_peak_flops
from benchkit.registry import GENERATORS

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


FULL = Plan(64, 5, 64, 16, (4, 8, 16, 64), (100, 50, 25), 1024, 2, 5, 4.0, 10)
QUICK = Plan(16, 2, 8, 4, (4, 8, 16, 64), (100, 50, 25), 256, 1, 2, 0.5, 5)


@dataclass
class Row:
    """One line of the table; None prints as a blank cell."""

    section: str
    model: str
    tokens: str = ""
    setting: str = ""
    params: int | None = None
    gflop_per_img: float | None = None
    img_per_s: float | None = None
    gflop_per_s: float | None = None
    peak_frac: float | None = None
    note: str = ""


# measurement helpers -----------------------------------------------------------------------------------------

def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (benchkit's counter: matmuls, convolutions and attention, CPU attention included)."""
    return flops_per_call(fn)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, plan: Plan, *, warmup: Callable[[], Any] | None) -> float:
    """Median seconds of ``fn()`` after one warm-up call (of ``warmup``, or of ``fn`` when it is None).

    Repeats at least ``plan.min_repeats`` times and at most ``plan.max_repeats``, stopping early once the timed
    calls have used ``plan.budget_s`` seconds.
    """
    (warmup or fn)()
    _sync(device)
    times: list[float] = []
    while len(times) < plan.max_repeats and (len(times) < plan.min_repeats or sum(times) < plan.budget_s):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_batch(spec: TokenSpec, batch: int, device: torch.device, seed: int = 0) -> Batch:
    """Uniform random token ids (discrete) or standard normal vectors (continuous) plus random labels."""
    return compute.random_batch(spec, batch, NUM_CLASSES, device=device, generator=torch.Generator().manual_seed(seed))


def build(name: str, head: str, layout: str, device: torch.device) -> nn.Module:
    """The tiny generator (config defaults) with its head, on ``device``, in eval mode."""
    torch.manual_seed(0)
    return GENERATORS.create(name, spec=SPECS[layout], head=head, num_classes=NUM_CLASSES).to(device).eval()


def generate(model: nn.Module, batch: int, device: torch.device, steps: int | None = None,
             diffusion_steps: int | None = None) -> Callable[[], Any]:
    """A closure that samples ``batch`` images' tokens with a fixed seed (cfg = 1)."""
    labels = torch.arange(batch, device=device) % NUM_CLASSES

    def run() -> torch.Tensor:
        g = torch.Generator(device=device).manual_seed(0)
        return model.generate(labels, steps=steps, generator=g, diffusion_steps=diffusion_steps)

    return run


# sections ----------------------------------------------------------------------------------------------------


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


def bench_train(model: nn.Module, name: str, head: str, layout: str, device: torch.device, plan: Plan) -> Row:
    """Parameters, FLOPs per image, images/s and achieved FLOP/s of full AdamW steps at ``plan.train_batch``.

    Step i runs under seed i both when its FLOPs are counted and when it is timed, so MAR's random mask ratio
    is the same in both and the per-step FLOP/s pairs up exactly.
    """
    batch = random_batch(SPECS[layout], plan.train_batch, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(batch).loss.backward()
        opt.step()

    for i in range(2):  # warm-up: lazy init, optimizer state, allocator
        torch.manual_seed(10_000 + i)
        step()
    flops, times = [], []
    for i in range(plan.train_steps):
        torch.manual_seed(i)
        flops.append(count_flops(step))
    for i in range(plan.train_steps):
        torch.manual_seed(i)
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    model.eval()
    return Row(
        "train", f"{name}+{head}", layout, f"B={plan.train_batch}", count_params(model),
        gflop_per_img=statistics.mean(flops) / plan.train_batch / 1e9,
        img_per_s=plan.train_batch / statistics.median(times),
        gflop_per_s=statistics.median(f / t for f, t in zip(flops, times, strict=True)) / 1e9,
    )


def steps_count(model: nn.Module, name: str, steps: int | None) -> int:
    """Generation steps of one ``generate`` call (AR: tokens, RQ: positions, MAR: rounds)."""
    if name == "mar":
        return min(model.cfg.steps, model.seq_len) if steps is None else steps
    if name == "rqtransformer":
        return model.spec.positions
    return model.seq_len


def sample_flops(model: nn.Module, head: str, device: torch.device, steps: int | None,
                 diffusion_steps: int | None = None) -> float:
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
    model: nn.Module, name: str, head: str, layout: str, device: torch.device, plan: Plan, steps: int | None,
    *, batch: int, section: str = "sample", setting: str = "", diffusion_steps: int | None = None,
) -> Row:
    """images/s of ``generate`` at ``batch`` (warm-up at batch <= 2, then the median), FLOPs per image."""
    warm = generate(model, min(2, batch), device, steps, diffusion_steps)
    sec = timed(generate(model, batch, device, steps, diffusion_steps), device, plan, warmup=warm)
    n = steps_count(model, name, steps)
    flops = sample_flops(model, head, device, steps, diffusion_steps)
    note = f"B={batch}; {1e3 * sec / n:.1f} ms/step"
    if head == "diffloss":
        note += f"; {diffusion_steps or model.head.cfg.sampling_steps} diffusion steps"
    return Row(
        section, f"{name}+{head}", layout, setting or f"steps={n}", count_params(model), flops / 1e9, batch / sec,
        flops * batch / sec / 1e9, note=note,
    )


def count_calls(model: nn.Module, fn: Callable[[], Any]) -> tuple[int, int]:
    """(head.sample calls, denoiser forward calls) during ``fn()``."""
    head = model.head
    counts = [0, 0]
    original = head.sample

    def counting_sample(*args: Any, **kwargs: Any) -> Any:
        counts[0] += 1
        return original(*args, **kwargs)

    def hook(*_: Any) -> None:
        counts[1] += 1

    handle = head.net.register_forward_hook(hook) if hasattr(head, "net") else None
    head.sample = counting_sample  # an instance attribute shadows the method
    try:
        fn()
    finally:
        del head.sample
        if handle is not None:
            handle.remove()
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


# table -------------------------------------------------------------------------------------------------------

COLUMNS = ["section", "model", "tokens", "setting", "params", "GFLOP/img", "img/s", "GFLOP/s", "% peak", "note"]


def _fmt(x: float | None, kind: str) -> str:
    if x is None:
        return ""
    if kind == "int":
        return f"{int(x) / 1e6:.2f}M"
    if kind == "pct":
        return f"{100 * x:.1f}"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def cells(r: Row) -> list[str]:
    return [
        r.section,
        r.model,
        r.tokens,
        r.setting,
        _fmt(r.params, "int"),
        _fmt(r.gflop_per_img, "num"),
        _fmt(r.img_per_s, "num"),
        _fmt(r.gflop_per_s, "num"),
        _fmt(r.peak_frac, "pct"),
        r.note,
    ]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


# main --------------------------------------------------------------------------------------------------------


def run(device: torch.device, plan: Plan, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    """Every section in order; returns the table rows and the run's metadata."""
    t_start = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None  # before our own threads add to it
    log.info("peak: 1024^3 fp32 matmul")
    peak0, mlp, mlp_shape = bench_peak(device, plan, plan.train_batch * 64)
    models = {c: build(*c, device) for c in COMBOS}

    train_rows = []
    for (name, head, layout), model in models.items():
        log.info("train: %s+%s on %s", name, head, layout)
        train_rows.append(bench_train(model, name, head, layout, device, plan))

    sample_rows, kv_rows, diff_rows = [], [], []
    with torch.no_grad():
        for (name, head, layout), model in models.items():
            for steps in [k for k in plan.mar_steps if k <= model.seq_len] if name == "mar" else [None]:
                log.info("sample: %s+%s on %s, steps %s", name, head, layout, steps or "fixed")
                row = bench_sample(model, name, head, layout, device, plan, steps, batch=plan.sample_batch)
                sample_rows.append(row)

        for layout in ("8x8 disc", "16x16 disc"):  # KV cache on / off
            model = models[("ar", "ce", layout)] if layout == "8x8 disc" else build("ar", "ce", layout, device)
            pair = []
            for on in (True, False):
                log.info("kv: ar+ce on %s, cache %s", layout, "on" if on else "off")
                model.use_kv_cache = on
                setting = f"{model.seq_len} tokens, cache {'on' if on else 'off'}"
                pair.append(bench_sample(model, "ar", "ce", layout, device, plan, None, batch=plan.kv_batch,
                                         section="kv", setting=setting))
            model.use_kv_cache = True
            pair[0].note += f"; speed-up {pair[0].img_per_s / pair[1].img_per_s:.1f}x"  # type: ignore[operator]
            kv_rows += pair

        mar_dl = models[("mar", "diffloss", "8x8x4 cont")]  # diffusion sampling steps
        g = torch.Generator(device=device).manual_seed(0)
        cond = torch.randn(plan.head_rows, mar_dl.cfg.width, generator=g, device=device)

        def head_only(k: int) -> Callable[[], torch.Tensor]:
            return lambda: mar_dl.head.sample(cond, generator=torch.Generator(device=device).manual_seed(0),
                                              diffusion_steps=k)

        for k in plan.diffusion_steps:
            log.info("diffusion: mar+diffloss, %d diffusion steps", k)
            row = bench_sample(mar_dl, "mar", "diffloss", "8x8x4 cont", device, plan, None, batch=plan.sample_batch,
                               section="diffusion", setting=f"{k} diffusion steps", diffusion_steps=k)
            head_sec = timed(head_only(k), device, plan, warmup=None)
            row.note += f"; head only {plan.head_rows / head_sec:,.0f} rows/s at {plan.head_rows} rows"
            diff_rows.append(row)

        loop_rows = [check_loops(models[c], *c, device) for c in COMBOS]

    log.info("peak again (end of run)")
    peak1 = matmul_peak_flops(device, size=1024, repeats=plan.peak_repeats)
    peak = max(peak0, peak1)
    rows = [
        Row("peak", "matmul fp32", "1024^3", "torch.mm", gflop_per_s=peak / 1e9,
            note=f"median of {plan.peak_repeats}, start {peak0 / 1e9:.1f} / end {peak1 / 1e9:.1f} GFLOP/s"),
        Row("peak", "matmul fp32", mlp_shape, "F.linear", gflop_per_s=mlp / 1e9, note="the tiny models' MLP shape"),
    ]
    rows += train_rows + sample_rows + kv_rows + diff_rows + loop_rows
    for r in rows:
        if r.gflop_per_s is not None:
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
        "targets": {
            "train_peak_frac_min": min(r.peak_frac or 0 for r in train_rows),
            "kv_speedup_256": ratio256,
            "kv_target_met": ratio256 >= 5.0,
            "loops_ok": all(r.note.startswith("OK") for r in loop_rows),
        },
    }
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches and fewer repeats (about a minute)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", metavar="PATH", help="also write the rows and the run's metadata as JSON")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, meta = run(torch.device(args.device), QUICK if args.quick else FULL, args.quick)
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
    sys.stdout.write(f"**{title}**\n\n{markdown(rows)}\n\n{summary}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
