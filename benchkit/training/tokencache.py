"""Token caches larger than memory: written once in shards of ``.npy`` files, read back memory-mapped.

Layout of a cache directory::

    index.json            {"n": N, "shard_size": S, "key": ..., "mirrored": bool}
    shard-00000.npy       rows 0 .. S-1 of what ``encode`` returned (any shape [S, ...], any numpy dtype)
    shard-00001.npy       ...

Building walks the dataset in order through a ``DataLoader`` (worker processes decode the images), encodes each
batch and writes its rows at once into their shard's file with plain file writes (no memory mapping, so the process
holds one batch, whatever the size of the data); a shard is written under a temporary name renamed into place when
full, so a killed build leaves only whole shards: building again skips them and continues with the first missing
one. A rich progress bar counts
images. ``mirrored`` caches the horizontal mirror of every image (MAR caches the posterior of each image and of
its mirror, and training picks one of the two per sample). Reading maps every shard with ``np.load(mmap_mode="r")``,
so only the rows a batch touches are paged in.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from benchkit.core import distributed as bdist
from benchkit.core.errors import CheckpointError
from benchkit.data.base import to_float
from benchkit.data.lazy import LazyImageFolder, image_loader

log = logging.getLogger(__name__)
INDEX = "index.json"


class _Unflipped(Dataset):
    """The images of a :class:`LazyImageFolder` in order, never randomly flipped (optionally all mirrored)."""

    def __init__(self, data: LazyImageFolder, mirrored: bool) -> None:
        self.data, self.mirrored = data, mirrored

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data.load(i, mirrored=self.mirrored)


def _shard_path(root: Path, i: int) -> Path:
    return root / f"shard-{i:05d}.npy"


def build_token_cache(
    data: LazyImageFolder,
    encode: Callable[[torch.Tensor], torch.Tensor],
    out_dir: str | Path,
    *,
    key: str,
    shard_size: int = 10_000,
    batch_size: int = 256,
    workers: int = 4,
    mirrored: bool = False,
    progress: bool = True,
) -> ShardedTokenCache:
    """Encode every image of ``data`` (uint8 batches [B, 3, H, W] -> ``encode`` -> [B, ...]) into shards.

    ``key`` identifies the tokenizer and data: an existing directory built with another key is refused.
    """
    if shard_size < 1 or shard_size % batch_size:
        raise CheckpointError(f"shard_size {shard_size} must be a positive multiple of batch_size {batch_size}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    index = {"n": len(data), "shard_size": shard_size, "key": key, "mirrored": mirrored}
    if (root / INDEX).is_file():
        found = json.loads((root / INDEX).read_text())
        if found != index:
            raise CheckpointError(
                f"token cache {str(root)!r} was built for {found}, not {index}; delete it or use another directory"
            )
    else:
        (root / INDEX).write_text(json.dumps(index))
    n_shards = (len(data) + shard_size - 1) // shard_size
    todo = [i for i in range(n_shards) if not _shard_path(root, i).is_file()]
    bar = _progress(progress, len(data), (n_shards - len(todo)) * shard_size, mirrored)
    # one loader (one set of worker processes) over the rows of every missing shard, in order; shard_size is a
    # multiple of batch_size, so each batch falls inside one shard, and its rows are written straight into that
    # shard's .npy file: nothing of a shard is held in memory beyond the batch being encoded
    # (row numbers in a numpy array, not a list of ints: the workers read it without copying its pages)
    rows = np.array([r for i in todo for r in range(i * shard_size, min(len(data), (i + 1) * shard_size))], np.int64)
    subset = Subset(_Unflipped(data, mirrored), rows)  # type: ignore[arg-type]  # an int64 array indexes like a list
    loader = image_loader(subset, batch_size=batch_size, workers=workers)
    writer = _ShardWriter(root, len(data), shard_size)
    try:
        done = 0
        for images in loader:
            with torch.no_grad():
                writer.write(int(rows[done]), encode(images).cpu().numpy())
            done += len(images)
            if bar is not None:
                bar.advance(bar.tasks[0].id, len(images))
        writer.close()
    finally:
        writer.abandon()
        if bar is not None:
            bar.stop()
    log.info("token cache %s: %d images in %d shards (%d built now)", root, len(data), n_shards, len(todo))
    return ShardedTokenCache(root)


class _ShardWriter:
    """Writes batches of encoded rows into a shard's pre-sized ``.npy`` file, renamed into place when full.

    Each batch goes to the file with a plain positioned write, never through a memory mapping: a mapped output
    would keep every row written so far resident in the process (dirty file pages, counted in its RSS) until the
    shard is closed. Written rows live only in the kernel's page cache, which it writes back and reclaims.
    """

    def __init__(self, root: Path, n: int, shard_size: int) -> None:
        self.root, self.n, self.shard_size = root, n, shard_size
        self.index: int | None = None
        self.filled = self.rows = self.offset = self.row_bytes = 0
        self.tmp: Path | None = None
        self.file: BinaryIO | None = None
        self.dtype: np.dtype = np.dtype(np.float32)
        self.row_shape: tuple[int, ...] = ()

    def _open(self, shard: int, values: np.ndarray) -> None:
        """Create the shard's temporary ``.npy``: the header numpy writes, then room for all its rows."""
        self.rows = min(self.n, (shard + 1) * self.shard_size) - shard * self.shard_size
        self.index, self.tmp = shard, self.root / f".shard-{shard:05d}.{os.getpid()}.tmp.npy"
        self.dtype, self.row_shape = values.dtype, tuple(values.shape[1:])
        self.file = open(self.tmp, "w+b")  # noqa: SIM115 (closed by close() or abandon())
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, *self.row_shape),
        }
        np.lib.format.write_array_header_1_0(self.file, header)
        self.offset = self.file.tell()
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape))
        self.file.truncate(self.offset + self.rows * self.row_bytes)

    def write(self, first_row: int, values: np.ndarray) -> None:
        shard = first_row // self.shard_size
        if shard != self.index:
            self.close()
            self._open(shard, values)
        assert self.file is not None
        start = first_row - shard * self.shard_size
        if tuple(values.shape[1:]) != self.row_shape or start + len(values) > self.rows:
            raise CheckpointError(
                f"rows {first_row}..{first_row + len(values) - 1} of shape {tuple(values.shape[1:])} "
                f"do not fit shard {shard} ({self.rows} rows of shape {self.row_shape})"
            )
        self.file.seek(self.offset + start * self.row_bytes)
        self.file.write(np.ascontiguousarray(values, dtype=self.dtype).data)
        self.filled += len(values)
        if self.filled == self.rows:
            self.close()

    def close(self) -> None:
        """Sync a full shard to disk and rename it into place; a shard not filled to the end is dropped instead."""
        if self.file is not None and self.tmp is not None and self.index is not None:
            if self.filled < self.rows:
                self.abandon()
                return
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, _shard_path(self.root, self.index))
        self.file, self.tmp, self.index, self.filled = None, None, None, 0

    def abandon(self) -> None:
        """After an error: drop a partly written shard, so a rebuild only ever sees whole shards."""
        if self.file is not None:
            self.file.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
        self.file, self.tmp, self.index, self.filled = None, None, None, 0


class ShardedTokenCache:
    """Rows of a finished sharded cache, memory-mapped; ``cache[idx]`` gathers rows into a torch tensor."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / INDEX).is_file():
            raise CheckpointError(f"{str(self.root)!r} is not a token cache (no {INDEX})")
        self.index: dict[str, Any] = json.loads((self.root / INDEX).read_text())
        n, size = int(self.index["n"]), int(self.index["shard_size"])
        paths = [_shard_path(self.root, i) for i in range((n + size - 1) // size)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise CheckpointError(
                f"token cache {str(self.root)!r} is unfinished ({len(missing)} shards missing, first "
                f"{missing[0]}); build it again to complete it"
            )
        self.shards = [np.load(p, mmap_mode="r") for p in paths]
        self.n, self.shard_size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx).long().reshape(-1)
        shard, row = idx // self.shard_size, idx % self.shard_size
        out = np.stack([self.shards[s][r] for s, r in zip(shard.tolist(), row.tolist())])
        return torch.from_numpy(out)


def _progress(enabled: bool, total: int, done: int, mirrored: bool) -> Any:
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(
        TextColumn("[bold]caching tokens" + (" (mirrored)" if mirrored else "")),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    p.add_task("cache", total=total, completed=done)
    p.start()
    return p


def sharded_token_cache(
    tok: Any, kind: str, folder: LazyImageFolder, path: Path, batch_size: int, mirrored: bool, workers: int = 4
) -> ShardedTokenCache:
    """The pipeline's token cache of a lazy folder: built once by rank 0 (under the tokenizer's lock), read by all."""

    device = next(tok.module.parameters()).device
    workers = min(workers, os.cpu_count() or 1)
    root = Path(f"{path}-shards")
    with bdist.stage_lock(tok.dir / ".lock"):
        if bdist.is_main():
            build_token_cache(
                folder,
                lambda x: tok.module.encode_for_cache(to_float(x).to(device), kind),
                root,
                key=f"{tok.fingerprint}-{kind}",
                shard_size=batch_size * 40,
                batch_size=batch_size,
                workers=workers,
                mirrored=mirrored,
                progress=True,
            )
        bdist.barrier()
    return ShardedTokenCache(root)
