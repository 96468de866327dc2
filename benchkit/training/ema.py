"""The trainer's exponential moving average of the weights, on ``torch.optim.swa_utils.AveragedModel``."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA:
    """Exponential moving average of the parameters (``torch.optim.swa_utils.AveragedModel`` with its EMA average);
    buffers are copied. ``shadow`` is the averaged copy's state dict: what checkpoints store as ``ema.*`` and what
    resuming copies back into."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        # AveragedModel's first update copies instead of averaging: spend it here, so that the average starts at the
        # initial weights and the first training step is already averaged in
        self.averaged.update_parameters(model)

    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        """The averaged weights and buffers by state-dict name (tensors sharing storage with the averaged copy)."""
        return self.averaged.module.state_dict()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """After an optimizer step: shadow = decay * shadow + (1 - decay) * weights; buffers copied."""
        self.averaged.update_parameters(model)
