"""What ``benchkit run``, ``sweep``, ``table`` and ``plot`` do, one function per command.

The CLI (:mod:`benchkit.cli.compare`) parses options, calls one function here and prints the result; expanding a
sweep, splitting it into a shard or into job processes (:mod:`benchkit.sweeps.parallel`), running it
(:mod:`benchkit.sweeps.runner`) and reading back its rows happen here.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchkit.core.errors import ConfigError
from benchkit.core.files import check_writable
from benchkit.core.threads import resolve_threads
from benchkit.metrics.configured import config_extractor
from benchkit.results.seeds import table_rows
from benchkit.results.store import filter_rows, read_rows, sort_rows
from benchkit.results.tables import split_kinds, write_tables
from benchkit.sweeps.parallel import claim_order, resolve_jobs, run_job_processes
from benchkit.sweeps.runner import SweepReport, execute, job_label, write_all, write_outputs
from benchkit.sweeps.sweepfile import Job, expand, load_sweep, parse_shard, shard, sweep_jobs
from benchkit.training.checks import load_splits


@dataclass(frozen=True)
class SweepPlan:
    """A sweep about to run: where its rows go, its jobs, and how this command splits them."""

    results_dir: Path
    valid: list[Job]
    skipped: list[Job]  # invalid combinations, each with its reason
    shard: tuple[int, int]  # (i, n) of ``--shard i/n``; (0, 1) without
    processes: int  # job processes on this host (``--jobs``)
    threads_per_process: int | None  # each job process's torch threads when ``processes`` > 1
    mine: list[Job]  # the valid jobs this command runs: its shard's, or all of them across its job processes


@dataclass(frozen=True)
class SweepOutcome:
    """A finished sweep: what it did, and every row of its results directory afterwards (None in a job process of
    ``--jobs N``, whose parent reads them)."""

    report: SweepReport
    rows: pd.DataFrame | None


def sweep_command(
    source: str | Path,
    *,
    command: Sequence[str],
    overrides: Sequence[str] = (),
    out_dir: Path | None = None,
    preset: str | None = None,
    shard_text: str | None = None,
    threads: int | None = None,
    processes: int | None = None,
    progress: bool = True,
    resume: bool = True,
    claim_dir: Path | None = None,
    on_plan: Callable[[SweepPlan], None] | None = None,
) -> SweepOutcome:
    """Expand the sweep ``source`` (a shipped name or a file) with ``overrides`` and run its valid jobs, then write
    its tables, plots and report.

    The jobs run in this process (only shard i of n with ``shard_text`` 'i/n'), or in ``processes`` job processes
    (``--jobs``, else ``$BENCHKIT_JOBS``, else the sweep file's ``jobs``, else 1), each a rerun of ``command`` (the
    benchkit arguments that name this sweep, e.g. ``["sweep", "my.toml"]``) with ``claim_dir``, which makes a process
    run only the jobs it claims first and leave the tables to its parent. ``on_plan`` sees the plan before any job
    runs. Every check (sweep file, overrides, shard, ``processes``, a writable results directory) happens before any
    compute."""
    i, n = parse_shard(shard_text)
    spec = load_sweep(source)
    extra = list(overrides)
    if out_dir is not None:
        extra.append(f'out_dir="{out_dir}"')
    if threads is not None:
        extra.append(f"threads={threads}")
    jobs = expand(spec, extra, preset)
    valid = [j for j in jobs if j.cfg is not None]
    if not valid:
        reasons = list(dict.fromkeys(j.skipped or "" for j in jobs))  # an override's error is every job's: once
        raise ConfigError("the sweep has no valid combination: " + "; ".join(reasons[:3]))
    cfg0 = valid[0].cfg
    assert cfg0 is not None, "a valid job has a config"
    results_dir = Path(cfg0.out_dir) / cfg0.name
    check_writable(results_dir)
    if claim_dir is not None:  # one job process of --jobs N: the parent writes the tables
        report = execute(claim_order(jobs), results_dir, progress=False, resume=resume, shards=n, claims=claim_dir)
        return SweepOutcome(report, None)
    if processes is None and shard_text is None:  # the sweep file's own default (the default comparison: 2)
        processes = sweep_jobs(spec)
    procs = resolve_jobs(processes, valid_jobs=len(valid), sharded=shard_text is not None)
    skipped = [j for j in jobs if j.cfg is None]
    if procs > 1:
        per_process, _ = resolve_threads(threads, shards=procs)
        plan = SweepPlan(results_dir, valid, skipped, (i, n), procs, per_process, valid)
    else:
        plan = SweepPlan(results_dir, valid, skipped, (i, n), 1, None, shard(jobs, i, n))
    if on_plan is not None:
        on_plan(plan)
    if procs > 1:
        args = _job_process_args(command, overrides, out_dir, preset, resume, plan.threads_per_process)
        report = _run_in_processes(args, plan)
    else:
        report = execute(plan.mine, results_dir, progress=progress, resume=resume, shards=n)
    return SweepOutcome(report, read_rows(results_dir))


def _job_process_args(
    command: Sequence[str],
    overrides: Sequence[str],
    out_dir: Path | None,
    preset: str | None,
    resume: bool,
    threads: int | None,
) -> list[str]:
    """The benchkit arguments of each job process: this sweep with the same options, ``threads`` threads each."""
    args = [*command, *(a for s in overrides for a in ("--set", s)), "--threads", str(threads)]
    args += (["--out-dir", str(out_dir)] if out_dir else []) + (["--preset", preset] if preset else [])
    return args + ([] if resume else ["--no-resume"])


def _run_in_processes(args: list[str], plan: SweepPlan) -> SweepReport:
    """The plan's jobs in ``plan.processes`` processes of ``benchkit *args`` (benchkit.sweeps.parallel), then its
    tables once."""
    t0 = time.perf_counter()
    prepare_features(plan.valid)
    claims = Path(tempfile.mkdtemp(prefix=".claims-", dir=plan.results_dir))
    try:
        run_job_processes(args, plan.processes, claims)
    finally:
        shutil.rmtree(claims, ignore_errors=True)
    report = SweepReport(plan.results_dir, done=[job_label(j.cfg) for j in plan.valid if j.cfg is not None])
    report.outputs = write_all(plan.results_dir, plan.valid)
    report.wall_s = time.perf_counter() - t0
    return report


def prepare_features(jobs: Sequence[Job]) -> None:
    """Build (or load from the cache) the feature network of each data set and ``eval.features`` of ``jobs`` here,
    with this process's threads, before job processes start: the ``dataset`` network is trained once instead of by
    the first job process while the others wait on its lock, and with the threads a one-process run uses, so its
    weights (and its ``features`` tag) do not depend on ``--jobs``."""
    seen = set()
    for job in jobs:
        cfg = job.cfg
        if cfg is None:
            continue
        key = (repr(cfg.data), cfg.eval.features, cfg.eval.inception_weights, cfg.out_dir)
        if key in seen:
            continue
        seen.add(key)
        train, _ = load_splits(cfg)
        config_extractor(cfg, train)


def _require_rows(results_dir: Path) -> None:
    if not (results_dir / "rows.jsonl").is_file():
        raise ConfigError(f"{str(results_dir)!r} has no rows.jsonl; run `benchkit run` or `benchkit eval` first")


@dataclass(frozen=True)
class TableOutcome:
    """The selected rows of a results directory and the table files written from them."""

    rows: pd.DataFrame
    written: list[Path]


def table_command(
    results_dir: Path,
    *,
    filters: Sequence[str] = (),
    sort: str | None = None,
    descending: bool = False,
    write: bool = True,
) -> TableOutcome:
    """The rows of ``results_dir`` that pass ``filters`` (e.g. ``head=ce``, ``fid<50``); with ``sort``, the generator
    rows folded over their training seeds (``table_rows``) and sorted by that column of the folded table (a mean
    over seeds), then the tokenizer rows sorted alike; with ``write``, table.csv / .md / .tex of them are rewritten."""
    _require_rows(results_dir)
    df = filter_rows(read_rows(results_dir), list(filters))
    if sort:
        gen, tok = split_kinds(df)
        parts = [sort_rows(table_rows(gen), sort, descending) if len(gen) else gen]
        parts += [sort_rows(tok, sort, descending)] if len(tok) else []
        df = pd.concat(parts)
    written = list(write_tables(df, results_dir).values()) if write else []
    return TableOutcome(df, written)


def plot_command(results_dir: Path) -> list[Path]:
    """Regenerate the outputs of ``results_dir`` (benchkit.sweeps.runner.write_outputs); returns the plots."""
    _require_rows(results_dir)
    return [p for p in write_outputs(results_dir, results_dir.parent) if p.suffix == ".png"]
