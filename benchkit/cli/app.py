"""The ``benchkit`` Typer app and its console entry point ``main``.

Exit codes: 0 success, 1 runtime error (training diverged, unreadable checkpoint), 2 usage error (bad name,
option, value or combination). Results go to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.markup import escape

from benchkit import __version__
from benchkit.cli import common, compare, components, importer, plan, report, train
from benchkit.core.errors import BenchkitError

app = typer.Typer(
    name="benchkit",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Compare tokenizers, generators and per-token heads of autoregressive image generation.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"benchkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logging."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """benchkit: which tokenizer, generator and head give the best quality for the compute?"""
    common.STATE["debug"] = debug
    common.setup_logging(verbose)


components.register(app)
train.register(app)
compare.register(app)
importer.register(app)
report.register(app)
plan.register(app)


def main() -> None:
    """Console entry point: one red line for benchkit errors (exit 1 or 2), tracebacks only with --debug."""
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n here, not as an exception
    except BenchkitError as e:
        if common.STATE.get("debug"):
            raise
        common.err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        common.err_console.print("rerun with --debug for the traceback", style="dim")
        sys.exit(e.exit_code)
    except typer.Abort:
        common.err_console.print("aborted")
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # usage errors of Typer's click layer, and anything unexpected
        show, exit_code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(exit_code)
        if isinstance(e, OSError):
            if common.STATE.get("debug"):
                raise
            common.err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(1)
        raise
    logging.shutdown()
    if isinstance(code, int) and code != 0:
        sys.exit(code)
