"""``benchkit run``, ``sweep``, ``table`` and ``plot``: the comparison across components."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from benchkit.cli.common import (
    JsonOpt,
    OutOpt,
    ProgressOpt,
    ResumeOpt,
    SeedsOpt,
    SetOpt,
    ThreadsOpt,
    emit_json,
    err_console,
    out_console,
    show_progress,
    with_seeds,
)
from benchkit.core.errors import ConfigError
from benchkit.core.threads import JOBS_ENV
from benchkit.sweeps.slurm import render_sbatch

if TYPE_CHECKING:
    from benchkit.sweeps.commands import SweepPlan

ResultsArg = Annotated[Path, typer.Argument(help="Results directory holding rows.jsonl, e.g. results/tiny.")]


JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        envvar=JOBS_ENV,
        show_envvar=False,
        help="Job processes on this host that share the sweep's jobs (default: $BENCHKIT_JOBS, else the sweep "
        "file's jobs, 2 for tiny, else 1); each job gets the cores divided by this many threads. Cost columns are "
        "then measured next to the other processes.",
    ),
]
ClaimOpt = Annotated[Path | None, typer.Option("--claim-dir", hidden=True)]  # set by --jobs for its processes


def _run_sweep(
    command: list[str],
    source: str,
    *,
    shard_text: str | None,
    sets: list[str] | None,
    out_dir: Path | None,
    preset: str | None,
    progress: bool,
    resume: bool,
    as_json: bool,
    threads: int | None,
    jobs: int | None,
    claim_dir: Path | None,
) -> None:
    """``run`` and ``sweep``: the sweep through benchkit.sweeps.commands, then its tables (or JSON) on stdout."""
    # late: heavy (torchvision, pandas, matplotlib); --help stays fast
    from benchkit.sweeps.commands import sweep_command

    show_progress(progress)
    outcome = sweep_command(
        source,
        command=command,
        overrides=sets or [],
        out_dir=out_dir,
        preset=preset,
        shard_text=shard_text,
        threads=threads,
        processes=jobs,
        progress=progress,
        resume=resume,
        claim_dir=claim_dir,
        on_plan=_announce,
    )
    if outcome.rows is None:  # one job process of --jobs N: the parent prints
        return
    report = outcome.report
    if as_json:
        emit_json(
            {
                "results_dir": report.results_dir,
                "done": report.done,
                "skipped": report.skipped,
                "outputs": report.outputs,
                "wall_s": report.wall_s,
                "rows": outcome.rows.to_dict(orient="records"),
            }
        )
        return
    _print_tables(outcome.rows, compact=True)
    err_console.print(f"wall time {report.wall_s:.0f} s; wrote:")
    for p in report.outputs:
        typer.echo(str(p))


def _announce(plan: SweepPlan) -> None:
    """The skipped combinations and how the jobs are split, on stderr before the first job."""
    for j in plan.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {' '.join(j.overrides[-3:])}: {j.skipped}", highlight=False)
    if plan.processes > 1:
        err_console.print(
            f"{len(plan.valid)} valid jobs in {plan.processes} processes of {plan.threads_per_process} thread(s) "
            f"each; results in {plan.results_dir}"
        )
    else:
        i, n = plan.shard
        err_console.print(
            f"{len(plan.mine)} of {len(plan.valid)} valid jobs in shard {i}/{n}; results in {plan.results_dir}"
        )


SUMMARY = {
    "tokenizer": [
        "tokenizer",
        "grid",
        "rfid",
        "psnr",
        "ssim",
        "lpips",
        "codebook_usage",
        "params",
        "encode_images_per_s",
    ],
    "generator": [
        "tokenizer",
        "generator",
        "head",
        "steps",
        "cfg",
        "cfg_schedule",
        "diffusion_steps",
        "fid",
        "fid_ci95",
        "n_seeds",
        "fid_gap_significant",
        "rank_stability",
        "seed_spread_fid",
        "kid_mean",
        "class_acc",
        "params",
        "images_per_s",
        "latency_s",
    ],
}  # kept in table order: see benchkit.results.store.table_columns


def _print_tables(df: Any, *, compact: bool) -> None:
    """One rich table per kind: with ``compact`` the SUMMARY columns that fit a terminal (the CSV, Markdown and
    LaTeX files keep every column)."""
    from benchkit.results.seeds import table_rows  # late: heavy (scipy); loaded already, `df` is a DataFrame
    from benchkit.results.tables import rich_table  # late: heavy (pandas); loaded already, `df` is a DataFrame

    for kind, title in (("tokenizer", "tokenizers"), ("generator", "generators")):
        part = df[df["kind"] == kind] if "kind" in df else df
        if kind == "generator" and len(part):
            part = table_rows(part)  # one row per model and setting, over its training seeds
            cols = [c for c in SUMMARY[kind] if c in part.columns] + ["kind"] if compact else list(part.columns)
            out_console.print(rich_table(part[cols], title))


def run(
    sweep: Annotated[str, typer.Option("--sweep", help="Shipped sweep name or a sweep .toml file.")] = "tiny",
    sets: SetOpt = None,
    out_dir: OutOpt = None,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Base preset (default: the sweep's).")] = None,
    shard_text: Annotated[str | None, typer.Option("--shard", help="i/n: run every n-th job from the i-th.")] = None,
    progress: ProgressOpt = True,
    resume: ResumeOpt = True,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    jobs: JobsOpt = None,
    claim_dir: ClaimOpt = None,
    seeds: SeedsOpt = None,
) -> None:
    """The default comparison: every tokenizer once, the generator x head grid, eval sweeps, tables and plots.

    Example: benchkit run            (the tiny grid on the embedded shapes dataset, 12-15 min on 2 CPU cores)
    """
    _run_sweep(
        ["run", "--sweep", sweep],
        sweep,
        shard_text=shard_text,
        sets=with_seeds(sets, seeds),
        out_dir=out_dir,
        preset=preset,
        progress=progress,
        resume=resume,
        as_json=as_json,
        threads=threads,
        jobs=jobs,
        claim_dir=claim_dir,
    )


def sweep(
    file: Annotated[Path, typer.Argument(help="Sweep TOML file (see benchkit/configs/sweeps/tiny.toml).")],
    sets: SetOpt = None,
    out_dir: OutOpt = None,
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Base preset (default: the file's).")] = None,
    shard_text: Annotated[str | None, typer.Option("--shard", help="i/n: run every n-th job from the i-th.")] = None,
    progress: ProgressOpt = True,
    resume: ResumeOpt = True,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    slurm: Annotated[
        int | None, typer.Option("--slurm", help="Print an sbatch array script of N shards instead.")
    ] = None,
    slurm_opts: Annotated[
        list[str] | None,
        typer.Option("--slurm-opt", help="Extra #SBATCH KEY=VALUE, e.g. partition=gpu, gpus-per-task=0."),
    ] = None,
    jobs: JobsOpt = None,
    claim_dir: ClaimOpt = None,
    seeds: SeedsOpt = None,
) -> None:
    """Run a grid over components and options; finished runs are skipped, so re-running resumes.

    Example: benchkit sweep my.toml --shard 0/4   (one of four machines or SLURM array tasks)
    """
    if not file.is_file():
        raise ConfigError(f"sweep file {str(file)!r} does not exist")
    sets = with_seeds(sets, seeds)
    if slurm is not None:
        typer.echo(
            render_sbatch(file, slurm, sets=sets or [], out_dir=out_dir, preset=preset, extra=slurm_opts or []),
            nl=False,
        )
        return
    _run_sweep(
        ["sweep", str(file)],
        str(file),
        shard_text=shard_text,
        sets=sets,
        out_dir=out_dir,
        preset=preset,
        progress=progress,
        resume=resume,
        as_json=as_json,
        threads=threads,
        jobs=jobs,
        claim_dir=claim_dir,
    )


def table(
    results: ResultsArg,
    filters: Annotated[
        list[str] | None, typer.Option("--filter", "-f", help="e.g. head=ce, fid<50 (repeatable).")
    ] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="Column to sort by.")] = None,
    descending: Annotated[bool, typer.Option("--desc", help="Sort descending.")] = False,
    as_json: JsonOpt = False,
    wide: Annotated[bool, typer.Option("--wide", help="Print every column (default: the key ones).")] = False,
) -> None:
    """Print the results table and rewrite table.csv / .md / .tex.

    Example: benchkit table results/tiny --filter head=diffloss --sort fid
    """
    # late: heavy (torchvision, pandas, matplotlib); --help stays fast
    from benchkit.sweeps.commands import table_command

    selected = table_command(results, filters=filters or [], sort=sort, descending=descending, write=not as_json)
    if as_json:
        emit_json(selected.rows.to_dict(orient="records"))
        return
    _print_tables(selected.rows, compact=not wide)
    for p in selected.written:
        err_console.print(f"wrote {p}")


def plot(results: ResultsArg, as_json: JsonOpt = False) -> None:
    """Regenerate the Pareto, FID-vs-steps and training-curve plots of a results directory.

    Example: benchkit plot results/tiny
    """
    # late: heavy (torchvision, pandas, matplotlib); --help stays fast
    from benchkit.sweeps.commands import plot_command

    plots = plot_command(results)
    if as_json:
        emit_json({"plots": plots})
        return
    for p in plots:
        typer.echo(str(p))


def register(app: typer.Typer) -> None:
    """Add the commands to the app."""
    app.command("run")(run)
    app.command("sweep")(sweep)
    app.command("table")(table)
    app.command("plot")(plot)
