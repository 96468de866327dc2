"""Numeric precision of training and sampling: ``fp32`` (default), ``bf16`` or ``fp16`` autocast.

Weights, optimizer state and EMA stay in float32 in every mode; only the forward computation runs under
``torch.autocast`` in the lower precision (matmuls, attention, convolutions), the usual mixed-precision recipe.
``fp16`` adds a gradient scaler (``torch.amp.GradScaler``) because float16 gradients underflow without one;
``bf16`` has float32's exponent range and needs none. Both work on CPU and on CUDA; on CPU, bf16 is fast only
where the processor has bf16 matrix instructions (AVX512-BF16 / AMX), fp16 autocast is mainly for tests.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal, get_args

import torch

from benchkit.core.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, where: str = "precision") -> None:
    """Refuse an unknown precision name, listing the valid ones."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown {where} {precision!r}; valid: {', '.join(PRECISIONS)}")


def autocast(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """A context in which forward passes run in ``precision`` on ``device`` (a no-op context for fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (None for fp32 and bf16)."""
    check_precision(precision)
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
