"""Progress bars for the long loops (sampling, token caching, feature extraction, reference statistics, sweeps).

One switch for the process: bars are drawn on stderr only when it is a terminal and the command did not get
``--no-progress`` (``set_enabled(False)``); otherwise every bar is a no-op, so logs and pipes stay clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchkit.core.interfaces import Progress

_STATE = {"enabled": True}


def set_enabled(enabled: bool) -> None:
    """Turn every progress bar of this process on (where stderr is a terminal) or off."""
    _STATE["enabled"] = enabled


def enabled() -> bool:
    """Whether bars are drawn: switched on and stderr is a terminal."""
    from rich.console import Console

    return _STATE["enabled"] and Console(stderr=True).is_terminal


_LIVE: dict[str, Any] = {"bar": None, "open": 0}  # one rich display shared by nested bars (rich draws one at a time)


@contextmanager
def progress_bar(desc: str, total: int | None = None) -> Iterator[Progress]:
    """A bar labelled ``desc`` (nested bars stack in one display); yields ``update(done, total)``, a no-op when bars
    are off."""
    if not enabled():
        yield _ignore
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    if _LIVE["bar"] is None:
        live = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        live.start()
        _LIVE["bar"] = live
    bar = _LIVE["bar"]
    _LIVE["open"] += 1
    task = bar.add_task(desc, total=total)
    try:
        yield lambda done, of: bar.update(task, completed=done, total=of)
    finally:
        bar.remove_task(task)
        _LIVE["open"] -= 1
        if _LIVE["open"] == 0:
            bar.stop()
            _LIVE["bar"] = None


def _ignore(done: int, total: int) -> None:
    del done, total
