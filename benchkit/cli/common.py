"""Shared CLI pieces: consoles, logging set-up, option aliases and config resolution."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from benchkit.core import progress
from benchkit.core.config import RunConfig, resolve


def _console(stderr: bool) -> Console:
    """A rich console; writing to a file or pipe (no terminal to fit, no COLUMNS), 160 columns wide rather than
    rich's 80, so that tables and log lines are not cut or wrapped needlessly."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


out_console = _console(stderr=False)
err_console = _console(stderr=True)
STATE: dict[str, Any] = {"debug": False}


def setup_logging(verbose: bool) -> None:
    """One RichHandler on the ``benchkit`` logger, on stderr."""
    logger = logging.getLogger("benchkit")
    logger.handlers.clear()
    logger.addHandler(RichHandler(console=err_console, show_path=False, rich_tracebacks=False))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


PresetOpt = Annotated[str | None, typer.Option("--preset", "-p", help="Shipped preset (tiny, small, ...).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML or JSON config file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override, e.g. --set train.lr=3e-4 (repeatable).")
]
OutOpt = Annotated[Path | None, typer.Option("--out-dir", "-o", help="Results root (default: results).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | mps")]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an unfinished run of the same config.")]
ProgressOpt = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress", help="Show progress bars on stderr (never when stderr is not a terminal)."
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout; logs stay on stderr.")
]


def emit_json(data: Any) -> None:
    """``data`` as strict JSON on stdout (NaN and infinity become null, paths and other objects strings)."""
    typer.echo(json.dumps(_strict(data), indent=1, default=str, allow_nan=False))


def _strict(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def show_progress(enabled: bool) -> None:
    """Apply a command's ``--progress/--no-progress`` to every progress bar of the process."""
    progress.set_enabled(enabled)


SeedsOpt = Annotated[
    int | None,
    typer.Option(
        "--seeds",
        min=1,
        help="Training seeds per model (train.seeds): N complete trainings that differ only in their seed; the "
        "table shows their mean and 95% interval.",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="Torch intra-op threads (config key 'threads'); default: $OMP_NUM_THREADS, else the "
        "usable cores divided by the --shard count. Same threads, same bits.",
    ),
]


def run_config(
    preset: str | None,
    config: Path | None,
    sets: list[str] | None,
    out_dir: Path | None,
    device: str | None,
    default_preset: str = "tiny",
    threads: int | None = None,
) -> RunConfig:
    """Resolve preset, file and overrides; --out-dir, --device and --threads are shorthands for --set."""
    overrides = list(sets or [])
    if out_dir is not None:
        overrides.append(f'out_dir="{out_dir}"')
    if device is not None:
        overrides.append(f'device="{device}"')
    if threads is not None:
        overrides.append(f"threads={threads}")
    return resolve(preset if preset or config else default_preset, config, overrides)


def with_seeds(sets: list[str] | None, seeds: int | None) -> list[str] | None:
    """``--set`` overrides plus ``train.seeds=N`` for ``--seeds N`` (after the others, so it wins)."""
    return sets if seeds is None else [*(sets or []), f"train.seeds={seeds}"]
