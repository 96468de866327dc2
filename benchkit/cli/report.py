"""``benchkit report``: one self-contained HTML page for a results directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benchkit.cli.common import err_console

ResultsArg = Annotated[Path, typer.Argument(help="Results directory (table.csv or rows.jsonl), e.g. results/tiny.")]
OutFileOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: RESULTS/report.html).")]
RunsRootOpt = Annotated[
    Path | None,
    typer.Option("--runs-root", help="Folder holding runs/ and tokenizers/ (default: the parent of RESULTS)."),
]


def report(
    results: ResultsArg,
    out: OutFileOpt = None,
    runs_root: RunsRootOpt = None,
) -> None:
    """Write report.html: provenance, sortable tables, plots, sample and reconstruction grids, deviations.

    Images are embedded, so the file opens offline and can be shared as it is.

    Example: benchkit report results/tiny
    """
    from benchkit.results.report import write_report  # late: heavy (torchvision, pandas); --help stays fast

    path = write_report(results, runs_root, out)
    err_console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", highlight=False)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("report")(report)
