"""The token cache's shard writer holds one batch: each batch reaches its shard's file at once, and the rows already
written never stay resident in the process (no list of rows, no memory mapping of the output)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from benchkit.core.errors import CheckpointError
from benchkit.training.tokencache import _ShardWriter

STATM = Path("/proc/self/statm")


def resident_mib() -> float:
    """This process's resident set (anonymous and file-backed pages), from Linux's /proc/self/statm."""
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not STATM.is_file(), reason="reads the resident set size from Linux's /proc")
def test_writing_a_64_mib_shard_keeps_no_rows_resident(tmp_path: Path) -> None:
    rows, batch = 4096, 256
    values = np.empty((batch, 64, 64), np.float32)  # rows of 16 KiB: a shard of 64 MiB, batches of 4 MiB
    writer = _ShardWriter(tmp_path, n=rows, shard_size=rows)
    before = peak = resident_mib()
    for first in range(0, rows, batch):
        values[:] = first
        values[-1, -1, -1] = -first
        writer.write(first, values)
        peak = max(peak, resident_mib())
        files = list(tmp_path.glob(".shard-00000.*.tmp.npy")) or [tmp_path / "shard-00000.npy"]
        with open(files[0], "rb") as f:  # this batch's first and last values are in the file already
            np.lib.format.read_magic(f)
            assert np.lib.format.read_array_header_1_0(f) == ((rows, 64, 64), False, np.float32)
            offset = f.tell()
            f.seek(offset + first * 16384)
            head = np.frombuffer(f.read(4), np.float32)
            f.seek(offset + (first + batch) * 16384 - 4)
            tail = np.frombuffer(f.read(4), np.float32)
        assert head[0] == first and tail[0] == -first
    grown = peak - before
    assert grown < 16, f"writing 64 MiB of rows grew the resident set by up to {grown:.0f} MiB"
    shard = np.load(tmp_path / "shard-00000.npy", mmap_mode="r")
    assert shard.shape == (rows, 64, 64) and shard.dtype == np.float32
    np.testing.assert_array_equal(shard[::batch, 0, 0], np.arange(0, rows, batch))
    np.testing.assert_array_equal(shard[batch - 1 :: batch, -1, -1], -np.arange(0, rows, batch))


def test_writer_refuses_rows_that_do_not_fit_the_shard(tmp_path: Path) -> None:
    writer = _ShardWriter(tmp_path, n=6, shard_size=4)
    writer.write(0, np.zeros((2, 3), np.int64))
    misfit = r"rows 2\.\.3 of shape \(4,\) do not fit shard 0 \(4 rows of shape \(3,\)\)"
    with pytest.raises(CheckpointError, match=misfit):
        writer.write(2, np.zeros((2, 4), np.int64))
    writer.abandon()
    assert list(tmp_path.iterdir()) == []
    writer.write(4, np.arange(6, dtype=np.int64).reshape(2, 3))  # the last shard holds 2 rows
    other = _ShardWriter(tmp_path, n=6, shard_size=4)
    with pytest.raises(CheckpointError, match=r"rows 5\.\.6 of shape \(3,\) do not fit shard 1 \(2 rows"):
        other.write(5, np.zeros((2, 3), np.int64))  # past the end of the last shard
    other.abandon()
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00001.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "shard-00001.npy"), [[0, 1, 2], [3, 4, 5]])


def test_lazy_folder_keeps_its_paths_in_one_numpy_buffer(tmp_path: Path) -> None:
    # forked DataLoader workers share a numpy buffer; a list of Path objects would be copied page by page into every
    # worker as reading each object writes its reference count (about 300 bytes per image per worker, measured)
    from PIL import Image

    from benchkit.data.lazy import LazyImageFolder

    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (100 * c, 40 * i, 0)).save(tmp_path / f"c{c}" / f"é{i}.png")
    folder = LazyImageFolder(tmp_path, image_size=8)
    assert isinstance(folder.files, np.ndarray) and folder.files.dtype.kind == "S" and folder.files.shape == (6,)
    i = int(np.flatnonzero(np.char.endswith(folder.files, os.fsencode("c1/é2.png")))[0])
    assert folder.load(i)[:, 0, 0].tolist() == [100, 80, 0]
