"""Checkpoints: tensors in safetensors, metadata in JSON, both written atomically and checked on load.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` and ``NAME.json``. The JSON carries the sha256 of the
tensor file, so a truncated, half-written or tampered checkpoint is refused with a clear error instead of being
read as valid. Nothing is ever unpickled: tensors come from safetensors, metadata from JSON.

Saving is a three-step journal so that a process killed at any instant (kill -9) leaves a loadable checkpoint:
1. the new tensors go to ``NAME.next.safetensors`` (temporary file, fsync, rename);
2. ``NAME.json`` is replaced by the new metadata, whose sha256 names the staged tensors;
3. the staged file is renamed onto ``NAME.safetensors``.
A kill before step 2 leaves the old pair intact (the stale staged file is ignored and overwritten later); a kill
between steps 2 and 3 is completed by the next load, which finds the staged file matching the JSON and renames it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

from benchkit.core.errors import CheckpointError
from benchkit.core.files import atomic_write, file_sha256

__all__ = ["atomic_write", "checkpoint_exists", "load_checkpoint", "save_checkpoint"]


def _paths(path: Path) -> tuple[Path, Path, Path]:
    """(tensor file, metadata file, staged tensor file) of checkpoint ``path``."""
    return path.with_suffix(".safetensors"), path.with_suffix(".json"), path.parent / f"{path.name}.next.safetensors"


def _promote(staged: Path, st: Path) -> None:
    """Rename the staged tensor file onto the live one; another process may have done it already."""
    try:
        os.replace(staged, st)
    except FileNotFoundError:
        pass


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write a checkpoint so that a kill at any point leaves the old or the new one loadable (module docstring)."""
    path = Path(path)
    st, js, staged = _paths(path)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(staged, lambda p: save_file(flat, str(p)))  # 1. stage the tensors
    body = json.dumps({**meta, "sha256": file_sha256(staged)}, indent=1, sort_keys=True, default=str)
    atomic_write(js, lambda p: p.write_text(body))  # 2. commit: the metadata now names the staged tensors
    _promote(staged, st)  # 3. publish


def _settle(path: Path) -> None:
    """Finish a save that was killed between its steps 2 and 3 (the JSON already names the staged tensors)."""
    st, js, staged = _paths(path)
    if not (staged.is_file() and js.is_file()):
        return
    try:
        want = json.loads(js.read_text()).get("sha256")
    except (ValueError, AttributeError):
        return
    if want is not None and file_sha256(staged) == want and not (st.is_file() and file_sha256(st) == want):
        _promote(staged, st)


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint written by ``save_checkpoint`` (CheckpointError when missing, truncated or
    modified)."""
    path = Path(path)
    st, js, _ = _paths(path)
    _settle(path)
    if not st.is_file() or not js.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is missing ({st.name} and {js.name} are both needed)")
    try:
        meta = json.loads(js.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint metadata {str(js)!r} is corrupt: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {str(js)!r} is corrupt: not a JSON object")
    data = st.read_bytes()  # hash and parse the same bytes, even if a writer replaces the file meanwhile
    if meta.get("sha256") != hashlib.sha256(data).hexdigest():
        raise CheckpointError(f"checkpoint {str(st)!r} does not match its recorded sha256 (truncated or modified)")
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {str(st)!r}: {e}") from None
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


def checkpoint_exists(path: Path) -> bool:
    """True when a checkpoint was committed (its JSON and tensors exist; content is verified on load)."""
    st, js, staged = _paths(Path(path))
    return js.is_file() and (st.is_file() or staged.is_file())


def apply_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Load a checkpoint's ``model.*`` tensors (the EMA copy when present) into ``module``."""
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def load_module_weights(module: torch.nn.Module, path: Path) -> dict[str, Any]:
    """Load a checkpoint's ``model.*`` tensors (the EMA copy when present) into ``module``; return its metadata."""
    tensors, meta = load_checkpoint(path)
    apply_weights(module, tensors, path)
    return meta
