"""What the generators share: token embedding, option checks, label dropout in training and the doubled batch of
classifier-free guidance at sampling.

The null class is ``num_classes`` (one extra row of each generator's class embedding). Training replaces each label
by it with probability ``label_drop``; a guided sampler runs [conditional rows; unconditional rows] in one batch.
"""

from __future__ import annotations

import torch
from torch import nn

from benchkit.core.interfaces import TokenSpec


def token_embedding(spec: TokenSpec, width: int) -> nn.Module:
    """Tokens of ``spec`` -> [..., width]: an embedding table for discrete ids, a Linear for continuous vectors."""
    if spec.kind == "discrete":
        return nn.Embedding(int(spec.vocab_size or 0), width)
    return nn.Linear(int(spec.dim or 0), width)


def drop_labels(labels: torch.Tensor, p: float, num_classes: int) -> torch.Tensor:
    """Each label replaced by the null class ``num_classes`` with probability ``p`` (torch's global RNG)."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def guidance_labels(labels: torch.Tensor, num_classes: int, guided: bool) -> torch.Tensor:
    """[labels; null class] when ``guided`` (the batch CFG runs), else ``labels``."""
    return torch.cat([labels, torch.full_like(labels, num_classes)]) if guided else labels
