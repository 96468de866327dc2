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
    SetOpt,
    ThreadsOpt,
    check_writable,
    emit_json,
    err_console,
    out_console,
    show_progress,
)
from benchkit.core.errors import ConfigError
from benchkit.sweeps.parallel import JOBS_ENV

if TYPE_CHECKING:
    from benchkit.sweeps.runner import SweepReport
    from benchkit.sweeps.sweepfile import Job

ResultsArg = Annotated[Path, typer.Argument(help="Results directory holding rows.jsonl, e.g. results/tiny.")]


JobsOpt = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        envvar=JOBS_ENV,
        show_envvar=False,
        help="Job processes on this host that share the sweep's jobs (default 1, or $BENCHKIT_JOBS); each job gets "
        "the cores divided by this many threads. On a CPU, 2 finish the tiny sweep sooner; cost columns are then "
        "measured next to the other process.",
    ),
]
ClaimOpt = Annotated[Path | None, typer.Option("--claim-dir", hidden=True)]  # set by --jobs for its processes


def _run_sweep(
    command: list[str],
    source: str,
    shard_text: str | None,
    sets: list[str] | None,
    out_dir: Path | None,
    preset: str | None,
    progress: bool,
    resume: bool,
    as_json: bool,
    threads: int | None = None,
    processes: int | None = None,
    claim_dir: Path | None = None,
) -> None:
    from benchkit.sweeps.runner import execute

    show_progress(progress)
    from benchkit.sweeps.sweepfile import expand, load_sweep, parse_shard, shard

    i, n = parse_shard(shard_text)
    spec = load_sweep(source)
    overrides = list(sets or [])
    if out_dir is not None:
        overrides.append(f'out_dir="{out_dir}"')
    if threads is not None:
        overrides.append(f"threads={threads}")
    jobs = expand(spec, overrides, preset)
    valid = [j for j in jobs if j.cfg is not None]
    if not valid:
        reasons = list(dict.fromkeys(j.skipped or "" for j in jobs))  # an override's error is every job's: once
        raise ConfigError("the sweep has no valid combination: " + "; ".join(reasons[:3]))
    cfg0 = valid[0].cfg
    assert cfg0 is not None
    results_dir = Path(cfg0.out_dir) / cfg0.name
    check_writable(results_dir)
    if claim_dir is not None:  # one job process of --jobs N: the parent prints and writes the tables
        from benchkit.sweeps.parallel import claim_order

        execute(claim_order(jobs), results_dir, progress=False, resume=resume, shards=n, claims=claim_dir)
        return
    from benchkit.sweeps.parallel import resolve_jobs

    procs = resolve_jobs(processes, valid_jobs=len(valid), sharded=shard_text is not None)
    skipped = [j for j in jobs if j.cfg is None]
    for j in skipped:
        err_console.print(f"[yellow]skipped[/yellow] {' '.join(j.overrides[-3:])}: {j.skipped}", highlight=False)
    if procs > 1:
        report = _run_in_processes(command, sets, out_dir, preset, resume, threads, procs, valid, results_dir)
    else:
        mine = shard(jobs, i, n)
        err_console.print(f"{len(mine)} of {len(valid)} valid jobs in shard {i}/{n}; results in {results_dir}")
        report = execute(mine, results_dir, progress=progress, resume=resume, shards=n)
    from benchkit.results.store import read_rows

    if as_json:
        emit_json(
            {
                "results_dir": results_dir,
                "done": report.done,
                "skipped": report.skipped,
                "outputs": report.outputs,
                "wall_s": report.wall_s,
                "rows": read_rows(results_dir).to_dict(orient="records"),
            }
        )
        return
    _print_tables(read_rows(results_dir), compact=True)
    err_console.print(f"wall time {report.wall_s:.0f} s; wrote:")
    for p in report.outputs:
        typer.echo(str(p))


def _run_in_processes(
    command: list[str],
    sets: list[str] | None,
    out_dir: Path | None,
    preset: str | None,
    resume: bool,
    threads: int | None,
    procs: int,
    valid: list[Job],
    results_dir: Path,
) -> SweepReport:
    """The sweep's jobs in ``procs`` processes of this command (benchkit.sweeps.parallel), then its tables once."""
    import shutil
    import tempfile
    import time

    from benchkit.core.threads import resolve_threads
    from benchkit.sweeps.parallel import run_job_processes
    from benchkit.sweeps.runner import SweepReport, job_label, write_all

    t0 = time.perf_counter()
    per_job, _ = resolve_threads(threads, shards=procs)
    args = [*command, *(a for s in sets or [] for a in ("--set", s)), "--threads", str(per_job)]
    args += (["--out-dir", str(out_dir)] if out_dir else []) + (["--preset", preset] if preset else [])
    args += [] if resume else ["--no-resume"]
    err_console.print(
        f"{len(valid)} valid jobs in {procs} processes of {per_job} thread(s) each; results in {results_dir}"
    )
    claims = Path(tempfile.mkdtemp(prefix=".claims-", dir=results_dir))
    try:
        run_job_processes(args, procs, claims)
    finally:
        shutil.rmtree(claims, ignore_errors=True)
    report = SweepReport(results_dir, done=[job_label(j.cfg) for j in valid if j.cfg is not None])
    report.outputs = write_all(results_dir, valid)
    report.wall_s = time.perf_counter() - t0
    return report


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
    from benchkit.results.store import rich_table

    for kind, title in (("tokenizer", "tokenizers"), ("generator", "generators")):
        part = df[df["kind"] == kind] if "kind" in df else df
        if len(part):
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
) -> None:
    """The default comparison: every tokenizer once, the generator x head grid, eval sweeps, tables and plots.

    Example: benchkit run            (the tiny grid on the embedded shapes dataset, about 15 min on 2 CPU cores)
    """
    _run_sweep(
        ["run", "--sweep", sweep],
        sweep,
        shard_text,
        sets,
        out_dir,
        preset,
        progress,
        resume,
        as_json,
        threads,
        jobs,
        claim_dir,
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
) -> None:
    """Run a grid over components and options; finished runs are skipped, so re-running resumes.

    Example: benchkit sweep my.toml --shard 0/4   (one of four machines or SLURM array tasks)
    """
    if not file.is_file():
        raise ConfigError(f"sweep file {str(file)!r} does not exist")
    if slurm is not None:
        from benchkit.sweeps.slurm import render_sbatch

        typer.echo(
            render_sbatch(file, slurm, sets=sets or [], out_dir=out_dir, preset=preset, extra=slurm_opts or []),
            nl=False,
        )
        return
    _run_sweep(
        ["sweep", str(file)],
        str(file),
        shard_text,
        sets,
        out_dir,
        preset,
        progress,
        resume,
        as_json,
        threads,
        jobs,
        claim_dir,
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
    from benchkit.results.store import filter_rows, read_rows, sort_rows, write_tables

    if not (results / "rows.jsonl").is_file():
        raise ConfigError(f"{str(results)!r} has no rows.jsonl; run `benchkit run` or `benchkit eval` first")
    df = read_rows(results)
    df = filter_rows(df, list(filters or []))
    if sort:
        df = sort_rows(df, sort, descending)
    if as_json:
        emit_json(df.to_dict(orient="records"))
        return
    paths = write_tables(df, results)
    _print_tables(df, compact=not wide)
    for p in paths.values():
        err_console.print(f"wrote {p}")


def plot(results: ResultsArg, as_json: JsonOpt = False) -> None:
    """Regenerate the Pareto, FID-vs-steps and training-curve plots of a results directory.

    Example: benchkit plot results/tiny
    """
    from benchkit.sweeps.runner import write_outputs

    if not (results / "rows.jsonl").is_file():
        raise ConfigError(f"{str(results)!r} has no rows.jsonl; run `benchkit run` or `benchkit eval` first")
    plots = [p for p in write_outputs(results, results.parent) if p.suffix == ".png"]
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
