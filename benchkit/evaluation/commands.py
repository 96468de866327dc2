"""What ``benchkit train-tokenizer``, ``train``, ``sample`` and ``eval`` do, one function per command.

The CLI (:mod:`benchkit.cli.train`) parses options, resolves the run config, calls one function here and prints the
result it returns; everything between (checks before compute, threads, data, training, sampling, evaluation,
writing files) happens here, so a script can do what a command does without Typer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from benchkit.core.config import RunConfig, apply_override, from_dict
from benchkit.core.distributed import is_main, pick_device
from benchkit.core.errors import ConfigError
from benchkit.core.files import check_writable
from benchkit.core.progress import progress_bar
from benchkit.core.registry import TOKENIZERS
from benchkit.core.threads import apply_threads
from benchkit.evaluation.evaluate import evaluate_run
from benchkit.evaluation.tokenizers import evaluate_tokenizer
from benchkit.metrics.battery import Battery, Check
from benchkit.metrics.configured import cache_dir
from benchkit.metrics.features import extractor_options, load_extractor
from benchkit.metrics.sanity import sanity_battery, save_sanity
from benchkit.sampling.generate import balanced_labels
from benchkit.sampling.grids import save_grid
from benchkit.training.artifacts import model_meta, seed_configs
from benchkit.training.checks import check_eval, load_splits
from benchkit.training.generator import train_generator
from benchkit.training.loading import load_run
from benchkit.training.tokenizer import train_tokenizer

EVAL_OVERRIDE_PREFIXES = ("eval.", "sample.")
"""The config sections ``benchkit eval --set`` may change: how a trained run is sampled and measured, not how it
was trained."""


@dataclass(frozen=True)
class TokenizerOutcome:
    """What ``benchkit train-tokenizer`` made: the tokenizer directory and its reconstruction row (None when not
    measured, or already measured). The fields are the keys of its ``--json``."""

    tokenizer_dir: Path
    row: dict[str, Any] | None


def train_tokenizer_command(
    cfg: RunConfig, *, resume: bool = True, progress: bool = True, evaluate: bool = True
) -> TokenizerOutcome:
    """Check the tokenizer's options and the output directory, train the tokenizer of ``cfg`` once (or load it) and,
    with ``evaluate``, append its reconstruction row to ``<out_dir>/<name>``."""
    TOKENIZERS.make_config(cfg.tokenizer.name, cfg.tokenizer.options)
    check_writable(Path(cfg.out_dir))
    apply_threads(cfg.threads)
    train, test = load_splits(cfg)
    tok = train_tokenizer(cfg, train, resume=resume, progress=progress)
    row = evaluate_tokenizer(tok, cfg, train, test, Path(cfg.out_dir) / cfg.name) if evaluate else None
    return TokenizerOutcome(tok.dir, row)


@dataclass(frozen=True)
class TrainOutcome:
    """What ``benchkit train`` made: the run and tokenizer directories and the run's ``model.json`` (None if absent).
    The fields are the keys of its ``--json``."""

    run_dir: Path
    tokenizer_dir: Path
    train: dict[str, Any] | None
    seed_runs: list[Path] | None = None  # with train.seeds > 1: every seed's run directory, the first's above


def train_command(cfg: RunConfig, *, resume: bool = True, progress: bool = True) -> TrainOutcome:
    """Check the output directory and train the generator of ``cfg`` (and its tokenizer if needed), once per
    training seed (``train.seeds``), each an ordinary run."""
    check_writable(Path(cfg.out_dir))
    apply_threads(cfg.threads)
    runs = [train_generator(c, resume=resume, progress=progress) for c in seed_configs(cfg)]
    first = runs[0]
    return TrainOutcome(
        first.dir, first.tokenizer.dir, model_meta(first.dir) or None, [r.dir for r in runs] if len(runs) > 1 else None
    )


@dataclass(frozen=True)
class SampleOutcome:
    """The grid ``benchkit sample`` wrote and how it was sampled. The fields are the keys of its ``--json``."""

    path: Path
    images: int
    classes: int
    per_class: int
    settings: dict[str, Any]
    seed: int


def sample_command(
    run_dir: Path,
    *,
    per_class: int = 10,
    steps: int | None = None,
    cfg: float | None = None,
    cfg_schedule: str | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    out: Path | None = None,
    threads: int | None = None,
) -> SampleOutcome | None:
    """Sample ``per_class`` images of every class from the run in ``run_dir`` and save them as one PNG grid, a row
    per class, at ``out`` (default ``run_dir/samples.png``).

    The sampling settings not given are the run's; ``threads`` defaults to the run's. Under torchrun every rank
    samples its share and only the main rank writes the grid and gets the outcome (the others get None)."""
    if out is not None:
        check_writable(out.parent)
    r = load_run(run_dir)
    apply_threads(threads if threads is not None else r.cfg.threads)
    given = {"steps": steps, "cfg": cfg, "cfg_schedule": cfg_schedule, "temperature": temperature}
    settings = r.cfg.sample.replace(**{k: v for k, v in given.items() if v is not None})
    k = r.generator.num_classes
    labels = balanced_labels(k * per_class, k).sort().values
    seed = r.cfg.seed if seed is None else seed
    with progress_bar("sampling", len(labels)) as bar:
        images = r.sample_images(labels, settings, seed=seed, distributed=True, progress=bar)  # each rank its share
    path = out or (r.dir / "samples.png")
    if not is_main():
        return None
    save_grid(images, path, nrow=per_class)
    return SampleOutcome(path, len(images), k, per_class, dataclasses.asdict(settings), seed)


def eval_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """``cfg`` with ``overrides`` applied; only ``eval.*`` and ``sample.*`` keys are accepted (a trained run's
    training cannot change)."""
    raw = cfg.to_dict()
    for o in overrides:
        if not o.startswith(EVAL_OVERRIDE_PREFIXES):
            raise ConfigError(f"eval only accepts eval.* and sample.* overrides, got {o!r}")
        apply_override(raw, o)
    return from_dict(RunConfig, raw, "")


@dataclass(frozen=True)
class EvalOutcome:
    """The generator rows ``benchkit eval`` appended, and where."""

    rows: list[dict[str, Any]]
    results_dir: Path


def eval_command(
    run_dir: Path, *, overrides: list[str] | None = None, results_dir: Path | None = None, threads: int | None = None
) -> EvalOutcome:
    """Measure the run in ``run_dir`` (its tokenizer's row too, if missing) with ``overrides`` of its eval and
    sample settings, and append the rows to ``results_dir`` (default ``<out_dir>/<name>`` of the run's config).

    Every setting is checked (features, ``eval.sweep`` entries, Inception weights) before any compute."""
    r = load_run(run_dir)
    apply_threads(threads if threads is not None else r.cfg.threads)
    cfg = r.cfg
    if overrides:
        cfg = eval_overrides(cfg, overrides)
        r = replace(r, cfg=cfg)
    check_eval(cfg)
    out = results_dir or Path(cfg.out_dir) / cfg.name
    check_writable(out)
    train, test = load_splits(cfg)
    evaluate_tokenizer(r.tokenizer, cfg, train, test, out)
    rows = evaluate_run(r, train, test, out, skip_done=False)
    return EvalOutcome(rows, out)


@dataclass(frozen=True)
class SanityOutcome:
    """The FID distortion battery of a feature network on real data, its requirement checks, and the file they
    were saved to."""

    battery: Battery
    checks: list[Check]
    saved: Path
    features: str  # the extractor's tag

    @property
    def failures(self) -> int:
        """How many requirement checks fail."""
        return sum(not c.passed for c in self.checks)

    def record(self) -> dict[str, Any]:
        """The saved battery and checks, as written to :attr:`saved`."""
        result: dict[str, Any] = json.loads(self.saved.read_text())
        return result


def sanity_command(cfg: RunConfig) -> SanityOutcome:
    """Run the FID distortion battery (benchkit.metrics.sanity) with the feature network of ``cfg.eval`` on the
    configured dataset, and save it under ``<out_dir>/sanity``."""
    apply_threads(cfg.threads)
    train, test = load_splits(cfg)
    ext = load_extractor(
        cfg.eval.features,
        train_data=train,
        cache_dir=cache_dir(cfg),
        device=pick_device(cfg.device),
        weights_path=cfg.eval.inception_weights,
        options=extractor_options(cfg.eval),
    )
    battery, checks = sanity_battery(train, test, ext, cfg.eval.num_samples, seed=cfg.seed)
    saved = save_sanity(battery, checks, Path(cfg.out_dir))
    return SanityOutcome(battery, checks, saved, ext.tag)
