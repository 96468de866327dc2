"""Training compute of a generator, counted: FLOPs of one training step times the number of steps.

One step is the generator's ``loss`` forward plus its backward on a batch of random tokens of the run's token
layout (FLOPs depend on shapes only), counted with torch's own per-op formulas
(:func:`benchkit.metrics.cost.flops_per_call`: matmuls, convolutions and attention; elementwise work and the
optimizer update are not counted). MAR's per-batch mask ratio changes its encoder's length from step to step, so
the step count is the mean over ``draws`` seeded draws. The count runs at a batch of at most ``COUNT_BATCH``
samples and is scaled to the training batch (every counted op is per sample, so FLOPs are linear in the batch;
the counting mode makes each op slow). The global RNG is left as it was.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from benchkit.errors import ConfigError
from benchkit.interfaces import Batch, TokenSpec
from benchkit.metrics.cost import flops_per_call

COUNT_BATCH = 8
_RUN_CACHE: dict[str, int] = {}


def random_batch(spec: TokenSpec, batch_size: int, num_classes: int, *, device: torch.device,
                 generator: torch.Generator) -> Batch:
    """Random tokens [B, *token_shape] of ``spec`` and labels in [0, num_classes)."""
    shape = (batch_size, *spec.token_shape)
    if spec.kind == "discrete":
        tokens = torch.randint(0, int(spec.vocab_size or 0), shape, generator=generator)
    else:
        tokens = torch.randn(shape, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return Batch(tokens.to(device), labels.to(device))


def train_step_flops(generator: nn.Module, spec: TokenSpec, batch_size: int, num_classes: int, *,
                     draws: int = 2, seed: int = 0) -> int:
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
                total += flops_per_call(lambda: generator.loss(batch).loss.backward())
        finally:
            generator.train(was_training)
            for p, grad in grads.items():
                p.grad = grad
    return round(total / draws * batch_size / counted)


def run_train_flops(run: Any) -> int:
    """Training FLOPs of a :class:`benchkit.pipeline.TrainedRun` (steps x one step), counted once per run."""
    key = str(run.dir)
    if key not in _RUN_CACHE:
        cfg = run.cfg
        per_step = train_step_flops(run.generator, run.combo.spec, cfg.train.batch_size,
                                    int(getattr(run.generator, "num_classes", 1)), seed=cfg.seed)
        _RUN_CACHE[key] = cfg.train.steps * per_step
    return _RUN_CACHE[key]
