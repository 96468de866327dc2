"""The token cache: what a trained tokenizer gives for every training image, encoded once and stored beside it
(in memory for small data; sharded and memory-mapped for a lazy image folder, ``benchkit.training.tokencache``)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from benchkit.core import distributed as bdist
from benchkit.core.checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    save_checkpoint,
)
from benchkit.core.distributed import is_main
from benchkit.core.errors import CheckpointError
from benchkit.core.interfaces import TokenKind
from benchkit.core.progress import progress_bar
from benchkit.data.base import ImageData, to_float
from benchkit.data.lazy import LazyImages
from benchkit.training.artifacts import TrainedTokenizer
from benchkit.training.tokencache import sharded_token_cache

log = logging.getLogger(__name__)


def _read_cache(path: Path, tok: TrainedTokenizer, n: int) -> torch.Tensor | None:
    """A stored token cache of this tokenizer and dataset size, or None (a damaged cache is recomputed)."""
    if not checkpoint_exists(path):
        return None
    try:
        tensors, meta = load_checkpoint(path)
    except CheckpointError as e:
        log.warning("recomputing the token cache: %s", e)
        return None
    if meta.get("n") == n and meta.get("fingerprint") == tok.fingerprint:
        return tensors["cache"]
    return None


@torch.no_grad()
def token_cache(
    tok: TrainedTokenizer, kind: TokenKind, data: ImageData, batch_size: int = 256, *, mirrored: bool = False
) -> torch.Tensor:
    """What the tokenizer's ``encode_for_cache`` gives for every training image (with ``mirrored``, for its
    horizontal mirror image), computed once (by rank 0) and stored."""
    path = tok.dir / f"tokens-{kind}{'-hflip' if mirrored else ''}"

    if isinstance(data.images, LazyImages):  # a folder larger than memory: sharded, memory-mapped, resumable
        return sharded_token_cache(tok, kind, data.images.folder, path, batch_size, mirrored)  # type: ignore[return-value]
    with bdist.stage_lock(tok.dir / ".lock"):
        cache = _read_cache(path, tok, len(data)) if is_main() else None
        if is_main() and cache is None:
            device = next(tok.module.parameters()).device
            parts = []
            with progress_bar(f"caching {kind} tokens", len(data)) as bar:
                for i in range(0, len(data), batch_size):
                    x = to_float(data.images[i : i + batch_size]).to(device)
                    parts.append(tok.module.encode_for_cache(x.flip(-1) if mirrored else x, kind).cpu())
                    bar(min(i + batch_size, len(data)), len(data))
            cache = torch.cat(parts)
            save_checkpoint(
                path,
                {"cache": cache},
                {"n": len(data), "kind": kind, "fingerprint": tok.fingerprint, "mirrored": mirrored},
            )
            log.info("cached %s tokens of %d %simages in %s", kind, len(data), "mirrored " if mirrored else "", path)
        bdist.barrier()
        if cache is None:  # the other ranks read what rank 0 wrote
            cache = _read_cache(path, tok, len(data))
            assert cache is not None, f"rank {bdist.rank()} found no token cache at {path} after rank 0 wrote it"
    return cache
