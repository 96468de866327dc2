"""Progress bars for the long loops (sampling, token caching, feature extraction, reference statistics, sweeps).

One switch for the process: bars are drawn on stderr only when it is a terminal and the command did not get
``--no-progress`` (``set_enabled(False)``); otherwise every bar is a no-op, so logs and pipes stay clean.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from benchkit.interfaces import Progress

_STATE = {"enabled": True}


def set_enabled(enabled: bool) -> None:
    """Turn every progress bar of this process on (where stderr is a terminal) or off."""
    _STATE["enabled"] = enabled


def enabled() -> bool:
    """Whether bars are drawn: switched on and stderr is a terminal."""
    from rich.console import Console

    return _STATE["enabled"] and Console(stderr=True).is_terminal


@contextmanager
def progress_bar(desc: str, total: int | None = None) -> Iterator[Progress]:
    """A bar labelled ``desc``; yields ``update(done, total)`` (a no-op when bars are off)."""
    if not enabled():
        yield _ignore
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

    bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=True)
    task = bar.add_task(desc, total=total)
    with bar:
        yield lambda done, of: bar.update(task, completed=done, total=of)


def _ignore(done: int, total: int) -> None:
    del done, total
