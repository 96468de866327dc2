"""Execute sweep jobs: train each tokenizer once, every generator on its tokens, evaluate, write outputs."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit.core.config import RunConfig
from benchkit.core.threads import apply_threads
from benchkit.data.base import ImageData
from benchkit.evaluation.evaluate import evaluate_run
from benchkit.evaluation.tokenizers import evaluate_tokenizer
from benchkit.results.convergence import convergence_series
from benchkit.results.plots import fid_vs_train_flops_plot, plots_from_results, training_curves_plot
from benchkit.results.report import write_report
from benchkit.results.store import read_rows
from benchkit.results.tables import write_tables
from benchkit.sweeps.parallel import claim
from benchkit.sweeps.sweepfile import Job
from benchkit.training.checks import load_splits
from benchkit.training.generator import train_generator

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What a sweep did: rows written, jobs skipped (with reasons), outputs and wall time."""

    results_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    wall_s: float = 0.0


def execute(
    jobs: list[Job],
    results_dir: Path,
    *,
    progress: bool = True,
    resume: bool = True,
    shards: int = 1,
    claims: Path | None = None,
) -> SweepReport:
    """Run the valid jobs in order; tokenizer rows once per tokenizer; tables and plots at the end.

    Before each job torch's thread count is set from the job's ``threads`` (default: the cores divided among the
    ``shards`` processes; see benchkit.core.threads), so a job computes what it would compute run on its own. With
    ``claims`` (a job process of ``--jobs N``, :mod:`benchkit.sweeps.parallel`) only the jobs this process claims first
    run, and the tables are left to the parent."""
    t0 = time.perf_counter()
    report = SweepReport(results_dir)
    splits: dict[str, tuple[ImageData, ImageData]] = {}
    for job in jobs:
        if job.cfg is None:
            report.skipped.append((" ".join(job.overrides), job.skipped or ""))
            continue
        if claims is not None and not claim(claims, job):
            continue
        cfg: RunConfig = job.cfg
        apply_threads(cfg.threads, shards=shards)
        key = repr((cfg.data,))
        if key not in splits:
            splits[key] = load_splits(cfg)
        train, test = splits[key]
        label = job_label(cfg)
        if claims is None:
            log.info("[%d/%d] %s", len(report.done) + 1, sum(j.cfg is not None for j in jobs), label)
        else:  # the jobs are shared among processes: no count of this one's
            log.info("[job process %d] %s", os.getpid(), label)
        run = train_generator(cfg, resume=resume, progress=progress, splits=(train, test))
        evaluate_tokenizer(run.tokenizer, cfg, train, test, results_dir)
        evaluate_run(run, train, test, results_dir)
        report.done.append(label)
    if claims is None:
        report.outputs = write_all(results_dir, jobs)
    report.wall_s = time.perf_counter() - t0
    return report


def job_label(cfg: RunConfig) -> str:
    """``tokenizer+generator+head`` of a job, as the log and ``SweepReport.done`` name it."""
    return f"{cfg.tokenizer.name}+{cfg.generator.name}+{cfg.head.name}"


def write_all(results_dir: Path, jobs: list[Job]) -> list[Path]:
    """:func:`write_outputs` and, when there were rows, the HTML report of them (benchkit.results.report)."""
    out_root = Path(jobs[0].cfg.out_dir) if jobs and jobs[0].cfg else results_dir.parent
    outputs = write_outputs(results_dir, out_root)
    if outputs:
        outputs.append(write_report(results_dir, out_root))
    return outputs


def write_outputs(results_dir: Path, out_root: Path) -> list[Path]:
    """Tables (CSV, Markdown, LaTeX), the Pareto, steps and convergence plots, training curves, from ``rows.jsonl``."""
    df = read_rows(results_dir)
    if df.empty:
        return []
    paths = list(write_tables(df, results_dir).values())
    paths += plots_from_results(results_dir, results_dir)
    logs = {}
    for _, row in df.iterrows():
        sub = "tokenizers" if row.get("kind") == "tokenizer" else "runs"
        p = out_root / sub / str(row.get("run")) / "log.csv"
        if p.is_file():
            logs[str(row.get("run"))] = p
    series = convergence_series(df, out_root)
    if series:  # train.convergence_points
        paths.append(results_dir / "fid_vs_train_flops.png")
        fid_vs_train_flops_plot(series, paths[-1])
    if logs:
        path = results_dir / "training_curves.png"
        training_curves_plot(logs, path)
        paths.append(path)
    return paths
