"""The training loop's state on disk: model, EMA, optimizer and RNG tensors of a checkpoint (and back), the
checkpoint's step, and the ``log.csv`` of losses kept in step with it (rows past a resumed checkpoint dropped)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchkit.core.checkpoint import atomic_write
from benchkit.training.ema import EMA


def state_tensors(
    model: nn.Module, opt: torch.optim.Optimizer, ema: EMA | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a checkpoint: weights, EMA shadow, optimizer state and the torch RNG state."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    sd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val
            else:
                scalars[f"{idx}.{key}"] = val
    tensors["rng.torch"] = torch.get_rng_state()
    return tensors, {"param_groups": sd["param_groups"], "optim_scalars": scalars}


def restore_state(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    model: nn.Module,
    opt: torch.optim.Optimizer,
    ema: EMA | None,
) -> None:
    """Put a checkpoint's ``state_tensors`` back into the model, EMA, optimizer and the torch RNG."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        for k, v in ema.shadow.items():
            if f"ema.{k}" in tensors:
                v.copy_(tensors[f"ema.{k}"])
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for k, v in meta.get("optim_scalars", {}).items():
        idx, key = k.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    _match_parameter_layouts(opt)
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))


def _match_parameter_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (AdamW's moments) its parameter's memory layout. A checkpoint stores
    tensors contiguous, while a channels-last convolution weight has other strides; the fused AdamW kernel walks
    parameter and moments as if their layouts were the same, so a resumed run would silently diverge from an
    uninterrupted one."""
    for param, st in opt.state.items():
        for key, val in st.items():
            if torch.is_tensor(val) and val.shape == param.shape and val.stride() != param.stride():
                st[key] = torch.empty_like(param, dtype=val.dtype).copy_(val)


def checkpoint_step(ckpt: Path) -> int:
    """The step a checkpoint was saved at."""
    return int(json.loads(ckpt.with_suffix(".json").read_text()).get("step", 0))


def read_log(path: Path, upto: int) -> list[dict[str, Any]]:
    """The rows of ``log.csv`` up to step ``upto`` (none when the file is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= upto]


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as ``log.csv`` atomically (nothing when there are none)."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write(p: Path) -> None:
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)
