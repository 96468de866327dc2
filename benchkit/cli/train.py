"""``benchkit train-tokenizer``, ``train``, ``sample`` and ``eval``: one run at a time."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
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
    SetOpt,
    ThreadsOpt,
    check_writable,
    emit_json,
    err_console,
    out_console,
    run_config,
    show_progress,
)
from benchkit.core.errors import ConfigError
from benchkit.core.threads import apply_threads

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
    from benchkit.core.registry import TOKENIZERS
    from benchkit.evaluation.evaluate import evaluate_tokenizer
    from benchkit.training.checks import load_splits
    from benchkit.training.tokenizer import train_tokenizer as _train

    show_progress(progress)
    sets = list(sets or [])
    if name:
        TOKENIZERS.get(name)
        sets.insert(0, f'tokenizer.name="{name}"')
    cfg = run_config(preset, config, sets, out_dir, device, threads=threads)
    TOKENIZERS.make_config(cfg.tokenizer.name, cfg.tokenizer.options)
    check_writable(Path(cfg.out_dir))
    apply_threads(cfg.threads)
    train, test = load_splits(cfg)
    tok = _train(cfg, train, resume=resume, progress=progress)
    row = evaluate_tokenizer(tok, cfg, train, test, Path(cfg.out_dir) / cfg.name) if evaluate else None
    if as_json:
        emit_json({"tokenizer_dir": tok.dir, "row": row})
        return
    if row:
        out_console.print_json(json.dumps({k: row[k] for k in row if k not in ("timestamp",)}, default=str))
    typer.echo(str(tok.dir))


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
) -> None:
    """Train one generator (and its tokenizer if needed) and print the run directory.

    Example: benchkit train --set generator.name=mar --set head.name=diffloss --set tokenizer.name=kl
    """
    from benchkit.training.generator import train_generator

    show_progress(progress)
    cfg = run_config(preset, config, sets, out_dir, device, threads=threads)
    check_writable(Path(cfg.out_dir))
    apply_threads(cfg.threads)
    run = train_generator(cfg, resume=resume, progress=progress)
    if as_json:
        meta_path = run.dir / "model.json"
        emit_json(
            {
                "run_dir": run.dir,
                "tokenizer_dir": run.tokenizer.dir,
                "train": json.loads(meta_path.read_text()) if meta_path.is_file() else None,
            }
        )
        return
    typer.echo(str(run.dir))


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
    from benchkit.core.distributed import is_main
    from benchkit.core.progress import progress_bar
    from benchkit.sampling.generate import balanced_labels, generate_images
    from benchkit.sampling.grids import save_grid
    from benchkit.training.loading import load_run

    show_progress(progress)
    if out is not None:
        check_writable(out.parent)
    r = load_run(run)
    apply_threads(threads if threads is not None else r.cfg.threads)
    given = {"steps": steps, "cfg": cfg, "cfg_schedule": cfg_schedule, "temperature": temperature}
    s = r.cfg.sample.replace(**{k: v for k, v in given.items() if v is not None})
    k = r.generator.num_classes
    labels = balanced_labels(k * n_per_class, k).sort().values
    with progress_bar("sampling", len(labels)) as bar:
        images = generate_images(
            r.generator,
            r.tokenizer.module,
            r.combo.kind,
            labels,
            s,
            seed=r.cfg.seed if seed is None else seed,
            batch_size=r.cfg.sample.batch_size,
            distributed=True,
            progress=bar,
        )  # under torchrun each rank samples its share
    path = out or (r.dir / "samples.png")
    if is_main():
        save_grid(images, path, nrow=n_per_class)
        if as_json:
            emit_json(
                {
                    "path": path,
                    "images": len(images),
                    "classes": k,
                    "per_class": n_per_class,
                    "settings": dataclasses.asdict(s),
                    "seed": r.cfg.seed if seed is None else seed,
                }
            )
        else:
            typer.echo(str(path))


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
    from benchkit.evaluation.evaluate import evaluate_run, evaluate_tokenizer
    from benchkit.training.checks import check_eval, load_splits
    from benchkit.training.loading import load_run

    show_progress(progress)
    if sanity:
        from benchkit.core.distributed import pick_device
        from benchkit.evaluation.evaluate import cache_dir
        from benchkit.metrics.battery import battery_table
        from benchkit.metrics.features import load_extractor
        from benchkit.metrics.sanity import sanity_battery, save_sanity

        cfgx = run_config(preset, config, sets, out_dir, device, threads=threads)
        apply_threads(cfgx.threads)
        train_d, test_d = load_splits(cfgx)
        ext = load_extractor(
            cfgx.eval.features,
            train_data=train_d,
            cache_dir=cache_dir(cfgx),
            device=pick_device(cfgx.device),
            weights_path=cfgx.eval.inception_weights,
        )
        battery, checks = sanity_battery(train_d, test_d, ext, cfgx.eval.num_samples, seed=cfgx.seed)
        saved = save_sanity(battery, checks, Path(cfgx.out_dir))
        if as_json:
            emit_json(json.loads(saved.read_text()))
        else:
            for renderable in battery_table(battery, checks):
                out_console.print(renderable)
        err_console.print(f"battery saved to {saved}")
        if not all(c.passed for c in checks):
            err_console.print(f"features {ext.tag}: {sum(not c.passed for c in checks)} battery requirement(s) fail")
            raise typer.Exit(1)
        return
    if run is None:
        raise ConfigError("benchkit eval needs a RUN directory (or --sanity)")
    r = load_run(run)
    apply_threads(threads if threads is not None else r.cfg.threads)
    cfg = r.cfg
    if sets:
        from benchkit.core.config import RunConfig, apply_override, from_dict

        raw = cfg.to_dict()
        for o in sets:
            if not o.startswith(("eval.", "sample.")):
                raise ConfigError(f"eval only accepts eval.* and sample.* overrides, got {o!r}")
            apply_override(raw, o)
        cfg = from_dict(RunConfig, raw, "")
        r = replace(r, cfg=cfg)
    check_eval(cfg)  # features name, eval.sweep entries, Inception weights: before any compute
    out = results or Path(cfg.out_dir) / cfg.name
    check_writable(out)
    train_d, test_d = load_splits(cfg)
    evaluate_tokenizer(r.tokenizer, cfg, train_d, test_d, out)
    rows = evaluate_run(r, train_d, test_d, out, skip_done=False)
    if as_json:
        emit_json(rows)
    else:
        out_console.print_json(json.dumps(rows, default=str))
    err_console.print(f"rows appended to {out / 'rows.jsonl'}")


def register(app: typer.Typer) -> None:
    """Add the commands to the app."""
    app.command("train-tokenizer")(train_tokenizer)
    app.command("train")(train)
    app.command("sample")(sample)
    app.command("eval")(evaluate)
