"""The pipeline from labels to images: ``generator.generate`` -> ``tokenizer.decode`` (models stay separate).

Each batch of ``batch_size`` samples draws from its own ``torch.Generator`` seeded by (seed, batch index), so the
images do not depend on how batches are spread over processes: under torchrun each rank takes every world-th
batch and the results are gathered in order. Sharding is opt-in (``distributed=True``) because a sharded call is
a collective that every rank has to join: a call made on rank 0 only (a cost measurement, a preview grid) keeps
the default and computes every batch itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

from benchkit.core import distributed as bdist
from benchkit.core.config import SampleSettings
from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import Generator, Tokenizer, TokenKind
from benchkit.core.precision import autocast
from benchkit.data.base import to_uint8
from benchkit.metrics.health import SampleHealth


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ... (n labels)."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def generate_tokens(
    generator: nn.Module,
    labels: torch.Tensor,
    settings: SampleSettings,
    *,
    seed: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
) -> list[torch.Tensor]:
    """Tokens for ``labels`` in batches, generated under autocast in ``settings.precision``: all of them, or with
    ``distributed`` (every rank must call) this rank's batches (index i for i % world == rank)."""
    sampler = cast(Generator, generator)
    device = next(generator.parameters()).device
    out = []
    nb = (len(labels) + batch_size - 1) // batch_size
    rank, world = (bdist.rank(), bdist.world_size()) if distributed else (0, 1)
    with autocast(settings.precision, device):
        for b in range(rank, nb, world):
            g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
            lab = labels[b * batch_size : (b + 1) * batch_size].to(device)
            out.append(sampler.generate(lab, settings=settings, generator=g))
            if progress is not None:
                progress(min((b + 1) * batch_size, len(labels)), len(labels))
    return out


@torch.no_grad()
def generate_images(
    generator: nn.Module,
    tokenizer: nn.Module,
    kind: TokenKind,
    labels: torch.Tensor,
    settings: SampleSettings,
    *,
    seed: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
    distributed: bool = False,
    health: SampleHealth | None = None,
) -> torch.Tensor:
    """uint8 images [N, 3, H, W] for ``labels``; with ``distributed`` under torchrun, every rank must call, each
    generates its share of the batches and all ranks receive all images in label order.

    ``health`` (``benchkit.metrics.health``) sees each batch of sampled tokens before it is decoded and the batch's
    images after; it only reads them, so the images are the same with or without it. Under ``distributed`` it sees
    this rank's batches only: call its ``all_reduce`` on every rank before reading its summary."""
    decoder = cast(Tokenizer, tokenizer)
    parts = []
    for t in generate_tokens(
        generator, labels, settings, seed=seed, batch_size=batch_size, progress=progress, distributed=distributed
    ):
        if health is not None:
            health.update_tokens(t)
        images = to_uint8(decoder.decode(t, kind)).cpu()
        if health is not None:
            health.update_images(images)
        parts.append(images)
    if not distributed or bdist.world_size() == 1:
        return torch.cat(parts)
    return _gather_batches(parts, len(labels), batch_size)


def _gather_batches(parts: list[torch.Tensor], n: int, batch_size: int) -> torch.Tensor:
    """Reassemble round-robin batches from all ranks into label order."""
    world = bdist.world_size()
    nb = (n + batch_size - 1) // batch_size
    per_rank = (nb + world - 1) // world
    # A rank can have no batch (fewer batches than ranks); rank 0 always has one and tells the others the shape.
    shape = bdist.broadcast_object(tuple(parts[0].shape[1:]) if parts else None)
    assert shape is not None, f"rank 0 generated no batch for {n} labels"
    pad = torch.zeros((per_rank * batch_size, *shape), dtype=torch.uint8)
    if parts:
        flat = torch.cat(parts)
        pad[: len(flat)] = flat
    gathered = bdist.gather_cat(pad).view(world, per_rank, batch_size, *shape)
    batches = [gathered[b % world, b // world] for b in range(nb)]
    return torch.cat(batches)[:n]


TUNABLE = ("temperature", "cfg", "cfg_schedule")


def candidates(base: SampleSettings, grid: Sequence[dict[str, Any]]) -> list[SampleSettings]:
    """The base setting then each grid point applied over it, without repeats; keys limited to ``TUNABLE``."""
    out = [base]
    for i, point in enumerate(grid):
        unknown = sorted(set(point) - set(TUNABLE))
        if unknown:
            raise ConfigError(f"eval.tune[{i}] has key {unknown[0]!r}, which is not tuned; valid: {', '.join(TUNABLE)}")
        try:
            s = dataclasses.replace(base, **point)
        except ConfigError as e:
            raise ConfigError(f"eval.tune[{i}]: {e}") from None
        if s not in out:
            out.append(s)
    return out
