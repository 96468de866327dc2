"""``benchkit components``: every registered component with its summary and options."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from benchkit.cli.common import out_console
from benchkit.core.compat import compatibility_table
from benchkit.core.errors import ConfigError, suggest
from benchkit.core.registry import FAMILIES


def components(
    family: Annotated[str | None, typer.Argument(help="tokenizers | generators | heads | datasets | features")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    compat: Annotated[
        bool, typer.Option("--compat", help="Print the tokenizer x generator x head compatibility table.")
    ] = False,
) -> None:
    """List registered components, one line each, with every option and its default.

    Example: benchkit components heads --json
    """
    if compat:
        rows = compatibility_table()
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        t = Table("tokenizer", "generator", "head", "status", title="combinations")
        for r in rows:
            t.add_row(
                r["tokenizer"], r["generator"], r["head"], "[green]ok[/green]" if r["status"] == "ok" else r["status"]
            )
        out_console.print(t)
        return
    if family is not None and family not in FAMILIES:
        raise ConfigError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}" + suggest(family, FAMILIES))
    families = [family] if family else list(FAMILIES)
    data = {f: [FAMILIES[f].describe(n) for n in FAMILIES[f].names()] for f in families}
    if as_json:
        typer.echo(json.dumps(data, indent=1, default=str))
        return
    for f, entries in data.items():
        t = Table("name", "summary", "options (default)", "source", title=f, show_lines=True)
        for e in entries:
            opts = ", ".join(f"{k}={v!r}" for k, v in e["options"].items())
            t.add_row(e["name"], e["summary"], opts, e["source"])
        out_console.print(t)


def register(app: typer.Typer) -> None:
    """Add the command to the app."""
    app.command("components")(components)
