"""``benchkit plan PRESET``: the cost of a config's generator training before it starts."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from benchkit.cli.common import ConfigOpt, SetOpt, out_console, run_config


def plan(
    preset: Annotated[str | None, typer.Argument(help="Shipped preset, e.g. mar-l (default: tiny).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs sharing train.batch_size (data parallel).")] = 32,
    utilisation: Annotated[float, typer.Option("--utilisation", help="Assumed fraction of the bf16 peak.")] = 0.4,
    num_classes: Annotated[int, typer.Option("--num-classes", help="Classes of the dataset.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Parameters, training FLOPs per image, per-GPU memory and GPU-hours of a config's generator training.

    Counted on the meta device in seconds, without a GPU; see benchkit/training/plan.py for what the estimates include.

    Example: benchkit plan mar-l --gpus 32
    """
    from benchkit.training.compute import budget_text  # late: torch's FLOP counter loads triton; --help stays fast
    from benchkit.training.plan import GPU_PEAKS, make_plan  # late: heavy (torchvision); --help stays fast

    cfg = run_config(preset, config, sets, None, None)
    p = make_plan(cfg, gpus=gpus, utilisation=utilisation, num_classes=num_classes)
    mem, mem_ckpt = p.memory_gb(False, cfg.train.ema_decay > 0), p.memory_gb(True, cfg.train.ema_decay > 0)
    if as_json:
        typer.echo(json.dumps({**asdict(p), "memory_gb": mem, "memory_gb_checkpointed": mem_ckpt}, indent=1))
        return
    t = Table("quantity", "value", title=f"plan: {p.name} (generator stage, {cfg.train.precision})")
    t.add_row("generator parameters", f"{p.generator_params / 1e6:.1f} M")
    t.add_row("tokenizer parameters", f"{p.tokenizer_params / 1e6:.1f} M")
    t.add_row("training FLOPs per image", f"{p.flops_per_image / 1e9:.0f} GFLOP (forward + backward)")
    budget = budget_text(cfg.train)
    t.add_row(
        "steps x global batch" + (f" (from {budget})" if budget else ""),
        f"{p.steps:,} x {p.batch_size:,} = {p.steps * p.batch_size / 1e6:.1f} M images",
    )
    t.add_row("total training FLOPs", f"{p.flops_per_image * p.steps * p.batch_size:.2e}")
    t.add_row(f"memory per GPU ({p.gpus} GPUs, {p.per_gpu_batch}/GPU)", f"{mem:.0f} GB")
    t.add_row("  with train.grad_checkpoint = true", f"{mem_ckpt:.0f} GB")
    for name, hours in p.gpu_hours.items():
        t.add_row(
            f"{name} GPU-hours at {p.utilisation:.0%} of {GPU_PEAKS[name] / 1e12:.0f} TFLOP/s",
            f"{hours:,.0f} ({hours / p.gpus / 24:.1f} days on {p.gpus})",
        )
    out_console.print(t)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("plan")(plan)
