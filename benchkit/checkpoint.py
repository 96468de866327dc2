"""Checkpoints: tensors in safetensors, metadata in JSON, both written atomically and checked on load.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` and ``NAME.json``. The JSON (written last) carries the
sha256 of the tensor file, so a truncated, half-written or tampered checkpoint is refused with a clear error
instead of being read as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from benchkit.errors import CheckpointError


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path`` (never a partial file at ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``path.safetensors`` then ``path.json`` (with the tensor file's sha256), both atomically."""
    path = Path(path)
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(st, lambda p: save_file(flat, str(p)))
    body = json.dumps({**meta, "sha256": _sha256(st)}, indent=1, sort_keys=True, default=str)
    atomic_write(js, lambda p: p.write_text(body))


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint written by ``save_checkpoint``."""
    path = Path(path)
    st, js = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not st.is_file() or not js.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is missing ({st.name} and {js.name} are both needed)")
    try:
        meta = json.loads(js.read_text())
    except ValueError as e:
        raise CheckpointError(f"checkpoint metadata {str(js)!r} is corrupt: {e}") from None
    if meta.get("sha256") != _sha256(st):
        raise CheckpointError(f"checkpoint {str(st)!r} does not match its recorded sha256 (truncated or modified)")
    try:
        tensors = load_file(str(st), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {str(st)!r}: {e}") from None
    return tensors, meta


def checkpoint_exists(path: Path) -> bool:
    """True when both files of a checkpoint exist (content is verified on load)."""
    path = Path(path)
    return path.with_suffix(".safetensors").is_file() and path.with_suffix(".json").is_file()


def load_module_weights(module: torch.nn.Module, path: Path) -> dict[str, Any]:
    """Load a checkpoint's ``model.*`` tensors (the EMA copy when present) into ``module``; return its metadata."""
    tensors, meta = load_checkpoint(path)
    prefix = "ema." if any(k.startswith("ema.") for k in tensors) else "model."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return meta
