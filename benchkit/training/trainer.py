"""The one training loop shared by tokenizers and generators.

AdamW (fused on CUDA and CPU), linear warm-up then cosine or constant learning rate, gradient clipping, EMA weights,
fp32 / bf16 / fp16 autocast (a gradient scaler for fp16), optional torch.compile and gradient checkpointing of
the transformer blocks, a rich progress bar with loss and images/s, periodic safetensors checkpoints, resume, a
CSV log, NaN/inf detection, and DDP when launched by torchrun. Batches are a pure function of (seed, step), so a resumed
run sees exactly the batches an uninterrupted one would have seen, and the torch RNG state is checkpointed for the
losses' own randomness.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchkit.core import distributed as bdist
from benchkit.core.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from benchkit.core.config import TrainConfig
from benchkit.core.errors import CheckpointError, TrainingDivergedError
from benchkit.core.interfaces import LossOutput
from benchkit.core.precision import autocast, grad_scaler
from benchkit.nn.transformer import set_grad_checkpointing
from benchkit.training.ema import EMA
from benchkit.training.tblog import TensorBoardLog
from benchkit.training.trainstate import checkpoint_step, read_log, restore_state, state_tensors, write_log

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"
FUSED_DEVICES = ("cuda", "cpu")  # where AdamW runs its fused kernel


@dataclass(frozen=True)
class TrainResult:
    """What a finished training stage reports."""

    steps: int
    final_loss: float
    images_per_s: float
    time_s: float
    checkpoint: Path
    resumed_from: int


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    start, out = step * batch_size, list[torch.Tensor]()
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to 0 or constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _LossModule(nn.Module):
    """Lets DDP see ``loss`` as ``forward`` so gradients are synchronised."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], LossOutput]) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Any) -> LossOutput:
        return self.loss_fn(self.model, batch)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "emb" in name or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel on CUDA and CPU (one call per step instead of about ten small ops per tensor; measured by
    # benchmarks/optimizer_step.py); elsewhere (MPS, other backends) torch's default path
    fused = bool(decay or no_decay) and all(p.device.type in FUSED_DEVICES for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused or None)


@dataclass
class _Loop:
    """What one training stage carries from step to step."""

    model: nn.Module
    module: nn.Module  # the loss module actually called: DDP-wrapped and/or compiled
    opt: torch.optim.Optimizer
    ema: EMA | None
    scaler: torch.amp.GradScaler | None
    cfg: TrainConfig
    device: torch.device
    ckpt: Path
    start: int


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], LossOutput],
    get_batch: Callable[[torch.Tensor], Any],
    num_items: int,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    seed: int,
    fingerprint: str,
    desc: str = "train",
    resume: bool = True,
    show_progress: bool = True,
    preview: Callable[[nn.Module], torch.Tensor] | None = None,
    evaluate_at: Collection[int] = (),
    evaluate: Callable[[nn.Module, int], None] | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps; ``get_batch(indices)`` returns the batch for those item indices.

    The run directory gets ``checkpoint.safetensors/.json`` (model, EMA, optimizer, RNG) and ``log.csv``.
    With ``resume`` an existing checkpoint of the same ``fingerprint`` is continued; a different one is refused.
    With ``cfg.tensorboard`` the logged values, and ``preview(model)`` (uint8 images) at each checkpoint, also go to
    TensorBoard (``benchkit.training.tblog``). After each step count in ``evaluate_at``, rank 0 calls
    ``evaluate(model, step)`` on a copy of the model holding the eval (EMA) weights, under a forked RNG and outside
    the timing, so the trained weights, the RNG stream and images/s are those of a run without it.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world, rank = bdist.world_size(), bdist.rank()
    if cfg.batch_size % world:
        raise CheckpointError(f"train.batch_size {cfg.batch_size} must be divisible by the {world} processes")
    torch.manual_seed(seed + rank)
    loop = _setup(model, loss_fn, cfg, run_dir, fingerprint, desc, resume)
    log_path = run_dir / "log.csv"
    rows = read_log(log_path, upto=loop.start) if loop.start else []
    per_rank = cfg.batch_size // world
    last_loss, t0, images_done = float("nan"), time.perf_counter(), 0
    progress = _progress(show_progress and bdist.is_main(), desc, cfg.steps, loop.start)
    tb = TensorBoardLog(run_dir if bdist.is_main() else None, enabled=cfg.tensorboard)
    model.train()
    try:
        for step in range(loop.start, cfg.steps):
            idx = batch_indices(num_items, cfg.batch_size, step, seed)[rank * per_rank : (rank + 1) * per_rank]
            out = _train_step(loop, step, get_batch(idx), run_dir, desc)
            last_loss = float(out.loss.detach())
            images_done += cfg.batch_size
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                ips = images_done / (time.perf_counter() - t0)
                last_loss = _log_row(rows, out, last_loss, done, loop.opt, ips)
                tb.scalars(done, {k: v for k, v in rows[-1].items() if k != "step"})
                _show(progress, desc, done, cfg, last_loss, ips)
            if bdist.is_main() and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                # the log first: a kill in between leaves extra rows, which a resume drops, never missing ones
                write_log(log_path, rows)
                _save(loop, done, fingerprint, desc)
                tb.preview(model, preview, done)
            if evaluate is not None and done in evaluate_at:
                t0 += _evaluate_copy(loop, evaluate, done)  # the evaluation's time is not training time
            bdist.barrier() if done % cfg.checkpoint_every == 0 or done in evaluate_at else None
    finally:
        tb.close()
        if progress is not None:
            progress.stop()
    return _finish(loop, rows, log_path, last_loss, images_done, time.perf_counter() - t0)


def _evaluate_copy(loop: _Loop, evaluate: Callable[[nn.Module, int], None], done: int) -> float:
    """``evaluate(copy with eval weights, done)`` on rank 0 with every RNG restored afterwards; returns its seconds."""
    t = time.perf_counter()
    if bdist.is_main():
        model = copy.deepcopy(loop.model)
        if loop.ema is not None:
            model.load_state_dict(loop.ema.shadow)
        model.eval()
        with torch.random.fork_rng(devices=[loop.device] if loop.device.type == "cuda" else []), torch.no_grad():
            evaluate(model, done)
        del model
    return time.perf_counter() - t


def _setup(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], LossOutput],
    cfg: TrainConfig,
    run_dir: Path,
    fingerprint: str,
    desc: str,
    resume: bool,
) -> _Loop:
    """Optimizer, EMA, gradient scaler, the checkpoint to resume from, checkpointing, DDP and compile."""

    device = next(model.parameters()).device
    opt = _optimizer(model, cfg)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    scaler = grad_scaler(cfg.precision, device)
    ckpt, start = run_dir / CHECKPOINT, 0
    if checkpoint_exists(ckpt):
        tensors, meta = load_checkpoint(ckpt, device)
        if meta.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"run directory {str(run_dir)!r} was made with a different config; use a new --out-dir or delete it"
            )
        if not resume and meta.get("step", 0) < cfg.steps:
            raise CheckpointError(f"{str(run_dir)!r} holds an unfinished run; pass --resume to continue it")
        restore_state(tensors, meta, model, opt, ema)
        if scaler is not None and "scaler" in meta:
            scaler.load_state_dict(meta["scaler"])
        start = int(meta["step"])
        log.info("%s: resuming from step %d", desc, start)
    set_grad_checkpointing(model, cfg.grad_checkpoint)
    module: nn.Module = _LossModule(model, loss_fn)
    if bdist.init_distributed(device):
        module = torch.nn.parallel.DistributedDataParallel(module)  # buffers follow rank 0 (the default)
    if cfg.compile:
        module = torch.compile(module)  # type: ignore[assignment]
    return _Loop(model, module, opt, ema, scaler, cfg, device, ckpt, start)


def _train_step(loop: _Loop, step: int, batch: Any, run_dir: Path, desc: str) -> LossOutput:
    """One optimizer step: forward under autocast, divergence check, (scaled) backward, clip, step, EMA."""

    cfg, opt = loop.cfg, loop.opt
    for g in opt.param_groups:
        g["lr"] = cfg.lr * lr_factor(step, cfg)
    with autocast(cfg.precision, loop.device):
        out: LossOutput = loop.module(batch)
    if bdist.any_rank(not bool(torch.isfinite(out.loss))):  # every rank stops at the same step
        good = checkpoint_step(loop.ckpt) if checkpoint_exists(loop.ckpt) else None
        raise TrainingDivergedError(
            f"{desc}: loss became {out.loss.item()} at step {step}; "
            + (
                f"last good checkpoint (step {good}) kept in {run_dir}"
                if good is not None
                else f"no checkpoint was written yet (checkpoint_every = {cfg.checkpoint_every})"
            )
            + "; lower the learning rate or raise warmup_steps"
        )
    opt.zero_grad(set_to_none=True)
    if loop.scaler is None:
        out.loss.backward()
    else:
        loop.scaler.scale(out.loss).backward()
        loop.scaler.unscale_(opt)  # clip the true gradients
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.grad_clip)
    if loop.scaler is None:
        opt.step()
    else:
        loop.scaler.step(opt)  # skipped when a gradient overflowed; the scale then shrinks
        loop.scaler.update()
    if loop.ema is not None:
        loop.ema.update(loop.model)
    return out


def _log_row(
    rows: list[dict[str, Any]], out: LossOutput, loss: float, done: int, opt: torch.optim.Optimizer, ips: float
) -> float:
    """Append the log row of step ``done``; returns the loss of the global batch (mean over ranks under DDP)."""
    numeric = {k: float(v) for k, v in out.logs.items() if isinstance(v, (int, float))}
    logs = {**out.logs, **bdist.mean_floats({**numeric, "loss": loss})}
    rows.append(
        {
            "step": done,
            "loss": logs["loss"],
            "lr": opt.param_groups[0]["lr"],
            "images_per_s": ips,
            **{k: v for k, v in logs.items() if k not in ("step", "loss", "lr", "images_per_s")},
        }
    )
    return float(logs["loss"])


def _show(progress: Any, desc: str, done: int, cfg: TrainConfig, loss: float, ips: float) -> None:
    if progress is None:
        return
    progress.update(progress.tasks[0].id, completed=done, loss=loss, ips=ips)
    if not progress.console.is_terminal and done % max(cfg.log_every, cfg.steps // 10) == 0:
        log.info("%s: step %d/%d  loss %.4f  %.0f img/s", desc, done, cfg.steps, loss, ips)


def _finish(
    loop: _Loop, rows: list[dict[str, Any]], log_path: Path, last_loss: float, images_done: int, elapsed: float
) -> TrainResult:
    """Switch to the EMA weights and eval mode; report the stage (from the log when nothing was left to train)."""
    cfg, start = loop.cfg, loop.start
    if start >= cfg.steps and not rows:
        rows = read_log(log_path, upto=cfg.steps)
    if loop.ema is not None:  # evaluate with EMA weights from here on
        loop.model.load_state_dict(loop.ema.shadow)
    loop.model.eval()
    return TrainResult(
        steps=cfg.steps,
        final_loss=last_loss if start < cfg.steps else float(rows[-1]["loss"]) if rows else float("nan"),
        images_per_s=images_done / elapsed if images_done else float(rows[-1]["images_per_s"]) if rows else 0.0,
        time_s=elapsed,
        checkpoint=loop.ckpt,
        resumed_from=start,
    )


def _save(loop: _Loop, step: int, fp: str, desc: str) -> None:
    tensors, meta = state_tensors(loop.model, loop.opt, loop.ema)
    if loop.scaler is not None:
        meta["scaler"] = loop.scaler.state_dict()
    save_checkpoint(loop.ckpt, tensors, {**meta, "step": step, "fingerprint": fp, "desc": desc})


def _progress(enabled: bool, desc: str, total: int, start: int) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.0f} img/s"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    p.add_task(desc, total=total, completed=start, loss=float("nan"), ips=0.0)
    p.start()
    return p
