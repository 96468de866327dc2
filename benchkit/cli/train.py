"""``benchkit train-tokenizer``, ``train``, ``sample`` and ``eval``: one run at a time."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

from benchkit.cli.common import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    PresetOpt,
    ProgressOpt,
    ResumeOpt,
    SeedsOpt,
    SetOpt,
    ThreadsOpt,
    emit_json,
    err_console,
    out_console,
    run_config,
    show_progress,
    with_seeds,
)
from benchkit.core.errors import ConfigError
from benchkit.core.registry import TOKENIZERS

RunArg = Annotated[Path, typer.Argument(help="A run directory (printed by `benchkit train`).")]


def train_tokenizer(
    name: Annotated[str | None, typer.Argument(help="Tokenizer name (vq, rq, kl); default from the preset.")] = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out_dir: OutOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = True,
    progress: ProgressOpt = True,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure reconstructions afterwards.")] = True,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Train a tokenizer once (reused by every generator), cache nothing yet, and measure its reconstructions.

    Example: benchkit train-tokenizer rq --set tokenizer_train.steps=200
    """
    # late: heavy (torchvision, pandas); --help stays fast
    from benchkit.evaluation.commands import train_tokenizer_command

    show_progress(progress)
    sets = list(sets or [])
    if name:
        TOKENIZERS.get(name)
        sets.insert(0, f'tokenizer.name="{name}"')
    cfg = run_config(preset, config, sets, out_dir, device, threads=threads)
    outcome = train_tokenizer_command(cfg, resume=resume, progress=progress, evaluate=evaluate)
    row = outcome.row
    if as_json:
        emit_json(dataclasses.asdict(outcome))
        return
    if row:
        out_console.print_json(json.dumps({k: row[k] for k in row if k not in ("timestamp",)}, default=str))
    typer.echo(str(outcome.tokenizer_dir))


def train(
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out_dir: OutOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = True,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    seeds: SeedsOpt = None,
) -> None:
    """Train one generator (and its tokenizer if needed) and print the run directory (one per training seed).

    Example: benchkit train --set generator.name=mar --set head.name=diffloss --set tokenizer.name=kl
    """
    from benchkit.evaluation.commands import train_command  # late: heavy (torchvision, pandas); --help stays fast

    show_progress(progress)
    cfg = run_config(preset, config, with_seeds(sets, seeds), out_dir, device, threads=threads)
    outcome = train_command(cfg, resume=resume, progress=progress)
    if as_json:
        emit_json(dataclasses.asdict(outcome))
        return
    for run_dir in outcome.seed_runs or [outcome.run_dir]:
        typer.echo(str(run_dir))


def sample(
    run: RunArg,
    n_per_class: Annotated[int, typer.Option("--per-class", min=1, help="Images per class in the grid.")] = 10,
    steps: Annotated[int | None, typer.Option(help="Generation steps (MAR); default: the run's.")] = None,
    cfg: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    cfg_schedule: Annotated[str | None, typer.Option(help="constant | linear")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (> 0).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; same seed, same images.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="PNG path (default RUN/samples.png).")] = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Write a PNG grid of samples, one row per class.

    Example: benchkit sample results/runs/vq-ar-ce-0123abcd --cfg 2.0
    """
    from benchkit.evaluation.commands import sample_command  # late: heavy (torchvision, pandas); --help stays fast

    show_progress(progress)
    outcome = sample_command(
        run,
        per_class=n_per_class,
        steps=steps,
        cfg=cfg,
        cfg_schedule=cfg_schedule,
        temperature=temperature,
        seed=seed,
        out=out,
        threads=threads,
    )
    if outcome is None:  # not the main rank under torchrun
        return
    if as_json:
        emit_json(dataclasses.asdict(outcome))
    else:
        typer.echo(str(outcome.path))


def evaluate(
    run: Annotated[Path | None, typer.Argument(help="Run directory; omit with --sanity.")] = None,
    sets: SetOpt = None,
    results: Annotated[
        Path | None, typer.Option("--results", help="Results directory (default results/<name>).")
    ] = None,
    sanity: Annotated[bool, typer.Option("--sanity", help="Run the FID distortion battery on real data.")] = False,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    out_dir: OutOpt = None,
    device: DeviceOpt = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Measure FID/IS/KID/PR (two libraries), class accuracy and cost of a run; append rows to the table.

    Example: benchkit eval results/runs/vq-ar-ce-0123abcd --set eval.num_samples=5000
    """
    # late: heavy (torchvision, pandas); --help stays fast
    from benchkit.evaluation.commands import eval_command, sanity_command

    show_progress(progress)
    if sanity:
        result = sanity_command(run_config(preset, config, sets, out_dir, device, threads=threads))
        if as_json:
            emit_json(result.record())
        else:
            # late: heavy (torchvision); sanity_command loaded it already
            from benchkit.metrics.battery import battery_table

            for renderable in battery_table(result.battery, result.checks):
                out_console.print(renderable)
        err_console.print(f"battery saved to {result.saved}")
        if result.failures:
            err_console.print(f"features {result.features}: {result.failures} battery requirement(s) fail")
            raise typer.Exit(1)
        return
    if run is None:
        raise ConfigError("benchkit eval needs a RUN directory (or --sanity)")
    outcome = eval_command(run, overrides=sets, results_dir=results, threads=threads)
    if as_json:
        emit_json(outcome.rows)
    else:
        out_console.print_json(json.dumps(outcome.rows, default=str))
    err_console.print(f"rows appended to {outcome.results_dir / 'rows.jsonl'}")


def export(
    run: RunArg,
    npz: Annotated[
        Path, typer.Option("--npz", help="The .npz to write: ADM's sample batch (arr_0 images, arr_1 labels).")
    ],
    n: Annotated[
        int | None, typer.Option("--n", min=1, help="Number of samples; default: the run's eval.num_samples.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; default: the run's.")] = None,
    sets: SetOpt = None,
    progress: ProgressOpt = True,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Write a run's samples, labels balanced, as an ADM .npz for guided-diffusion's evaluator (or any reader of arr_0).

    Example: benchkit export results/runs/kl-mar-diffloss-0123abcd --npz samples.npz --n 50000 --set sample.cfg=2.9
    """
    from benchkit.evaluation.protocols import export_command  # late: heavy (torchvision, pandas); --help stays fast

    show_progress(progress)
    outcome = export_command(run, npz, n=n, seed=seed, overrides=sets, threads=threads)
    if as_json:
        emit_json(dataclasses.asdict(outcome))
    else:
        typer.echo(str(outcome.path))


def register(app: typer.Typer) -> None:
    """Add the commands to the app."""
    app.command("train-tokenizer")(train_tokenizer)
    app.command("train")(train)
    app.command("sample")(sample)
    app.command("eval")(evaluate)
    app.command("export")(export)
