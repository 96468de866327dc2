"""Training compute of a generator, counted: FLOPs of one training step times the number of steps.

One step is the generator's ``loss`` forward plus its backward on a batch of random tokens of the run's token
layout (FLOPs depend on shapes only), counted with torch's own per-op formulas
(:func:`benchkit.metrics.cost.flops_per_call`: matmuls, convolutions and attention; elementwise work and the
optimizer update are not counted). MAR's per-batch mask ratio changes its encoder's length from step to step, so
the step count is the mean over ``draws`` seeded draws. The count runs at a batch of at most ``COUNT_BATCH``
samples and is scaled to the training batch (every counted op is per sample, so FLOPs are linear in the batch;
the counting mode makes each op slow). The global RNG is left as it was.

A training budget (``train.budget_flops`` or ``train.budget_images``, :func:`apply_budget`) turns these counts
into each generator's step count, so a sweep can compare generators at equal compute instead of equal steps.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from benchkit.core.config import RunConfig
from benchkit.core.errors import ConfigError
from benchkit.core.identity import fingerprint
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.metrics.cost import flops_per_call
from benchkit.training.artifacts import base_seed_config

log = logging.getLogger(__name__)
COUNT_BATCH = 8
_STEP_CACHE: dict[str, int] = {}


def random_batch(
    spec: TokenSpec, batch_size: int, num_classes: int, *, device: torch.device, generator: torch.Generator
) -> Batch:
    """Random tokens [B, *token_shape] of ``spec`` and labels in [0, num_classes)."""
    shape = (batch_size, *spec.token_shape)
    if spec.kind == "discrete":
        tokens = torch.randint(0, int(spec.vocab_size or 0), shape, generator=generator)
    else:
        tokens = torch.randn(shape, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return Batch(tokens.to(device), labels.to(device))


def train_step_flops(
    generator: nn.Module, spec: TokenSpec, batch_size: int, num_classes: int, *, draws: int = 2, seed: int = 0
) -> int:
    """Mean FLOPs of one training step (loss forward + backward) over ``draws`` random batches."""
    if batch_size < 1 or draws < 1:
        raise ConfigError(f"batch_size and draws must be >= 1, got {batch_size}, {draws}")
    device = next(generator.parameters()).device
    g = torch.Generator().manual_seed(seed)
    was_training = generator.training
    grads = {p: p.grad for p in generator.parameters()}
    total = 0
    counted = min(batch_size, COUNT_BATCH)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        generator.train()
        try:
            for _ in range(draws):
                batch = random_batch(spec, counted, num_classes, device=device, generator=g)
                total += flops_per_call(lambda: generator.loss(batch).loss.backward())  # type: ignore[operator]  # noqa: B023
        finally:
            generator.train(was_training)
            for p, grad in grads.items():
                p.grad = grad
    return round(total / draws * batch_size / counted)


def config_step_flops(cfg: RunConfig, generator: nn.Module, spec: TokenSpec) -> int:
    """:func:`train_step_flops` of ``generator`` at ``cfg.train.batch_size``, counted once per process for each
    (data, tokenizer, generator, head, batch size, seed). The count's draws use the model's first training seed, so
    every training seed of a model gets the same step count under a budget (MAR's mask ratio is drawn)."""
    seed = base_seed_config(cfg).seed
    key = fingerprint("step-flops", cfg.data, cfg.tokenizer, cfg.generator, cfg.head, cfg.train.batch_size, seed)
    if key not in _STEP_CACHE:
        _STEP_CACHE[key] = train_step_flops(
            generator, spec, cfg.train.batch_size, int(getattr(generator, "num_classes", 1)), seed=seed
        )
    return _STEP_CACHE[key]


def run_train_flops(run: Any) -> int:
    """Training FLOPs of a :class:`benchkit.training.artifacts.TrainedRun` (steps x one step)."""
    return run.cfg.train.steps * config_step_flops(run.cfg, run.generator, run.combo.spec)


def budget_text(train: Any) -> str:
    """``train.budget_flops = 4.5e+12`` or ``train.budget_images = N``, whichever is set ("" for none)."""
    if train.budget_flops:
        return f"train.budget_flops = {train.budget_flops:.4g}"
    return f"train.budget_images = {train.budget_images}" if train.budget_images else ""


def budget_steps(train: Any, step_flops: int) -> int:
    """The steps that ``train.budget_flops`` (whole steps of ``step_flops`` FLOPs, rounded down) or
    ``train.budget_images`` (whole batches) allow; ``train`` is a :class:`benchkit.core.config.TrainConfig`."""
    if train.budget_flops:
        steps = int(train.budget_flops // step_flops)
        unit = f"one step ({step_flops:.4g} FLOPs at batch {train.batch_size})"
    else:
        steps = train.budget_images // train.batch_size
        unit = f"one batch (train.batch_size = {train.batch_size})"
    if steps < 1:
        raise ConfigError(f"{budget_text(train)} is less than {unit}; raise the budget or lower train.batch_size")
    return steps


def apply_budget(cfg: RunConfig, generator: nn.Module, spec: TokenSpec) -> RunConfig:
    """``cfg`` with ``train.steps`` derived from the training budget when one is set (else ``cfg`` itself).

    With a budget every generator of a sweep gets the steps its own counted cost per step allows, so all of them
    train for the same FLOPs (within one step) or the same images; ``train.steps`` is then not used."""
    train = cfg.train
    if not (train.budget_flops or train.budget_images):
        return cfg
    per_step = config_step_flops(cfg, generator, spec)
    steps = budget_steps(train, per_step)
    log.info(
        "%s+%s+%s: %s FLOPs per step, budget %s -> %d steps (%.4g FLOPs; train.steps = %d not used)",
        cfg.tokenizer.name,
        cfg.generator.name,
        cfg.head.name,
        f"{per_step:.4g}",
        f"{train.budget_flops:.4g} FLOPs" if train.budget_flops else f"{train.budget_images} images",
        steps,
        steps * per_step,
        train.steps,
    )
    return dataclasses.replace(cfg, train=dataclasses.replace(train, steps=steps))
