"""Progress bars: off with --no-progress or off a terminal, nested bars share one display, and nothing on stdout."""

from __future__ import annotations

import pytest

from benchkit.core import progress


def test_bars_are_noops_when_off(capsys: pytest.CaptureFixture[str]) -> None:
    progress.set_enabled(True)
    assert not progress.enabled()  # stderr is captured here, not a terminal
    with progress.progress_bar("sampling", 4) as bar:
        bar(1, 4)
    assert capsys.readouterr() == ("", "")


def test_nested_bars_share_one_display(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress, "enabled", lambda: True)
    with progress.progress_bar("evaluating", 2) as outer:
        live = progress._LIVE["bar"]
        with progress.progress_bar("sampling", 10) as inner:
            assert progress._LIVE["bar"] is live and len(live.tasks) == 2
            inner(10, 10)
        assert len(live.tasks) == 1 and live.tasks[0].description == "evaluating"
        outer(2, 2)
    assert progress._LIVE == {"bar": None, "open": 0}
    assert capsys.readouterr().out == ""  # bars draw on stderr only


def test_no_progress_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    monkeypatch.setattr(Console, "is_terminal", property(lambda self: True))
    progress.set_enabled(False)
    try:
        assert not progress.enabled()
    finally:
        progress.set_enabled(True)
    assert progress.enabled()
