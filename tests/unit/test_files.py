"""The atomic writer: whole files only, and the permissions of a plain open()."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from benchkit.core.files import atomic_write


def test_atomic_write_gives_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda p: p.write_text("x"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "x"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_atomic_write_leaves_old_file_and_no_temp_on_error(tmp_path: Path) -> None:
    target = tmp_path / "b.txt"
    target.write_text("old")

    def fail(p: Path) -> None:
        p.write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["b.txt"]
