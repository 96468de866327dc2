"""Per-row tuning of sampling settings (temperature, CFG scale and schedule) on a validation split.

MAR's Table 1 reports every entry at its best temperature / CFG. ``eval.tune`` lists grid points, each a partial
sampling setting applied over the run's base setting (``{ temperature = 0.9 }``, ``{ cfg = 2.0,
cfg_schedule = "linear" }``, ...); the base itself is always a candidate. The base row is tuned, and so is each
``eval.sweep`` row that only changes untuned fields (MAR's step count, diffusion steps, precision), each on its own;
a sweep row that sets a CFG or temperature itself is a deliberate comparison and is kept. Each candidate draws
``eval.tune_samples`` samples, scored by ``eval.tune_metric`` (KID by default, or FID) against ``eval.tune_reference``
images of a validation split (as many as the samples when unset) that is neither the training data nor the test
reference; the best replaces the base setting, and the rows then measure it on the test reference as usual
(the chosen values are the row's ``cfg`` / ``cfg_schedule`` / ``temperature``). Scores and the search time go to
the log.

Sample health: every candidate's samples go through the sample health check (``benchkit.metrics.health``, against
the run's training tokens). A candidate whose samples diverged or collapsed is never chosen, whatever its score
(a diverged sampler can score deceptively well on a few hundred samples, or break the metric): it is skipped with
one log line; when every candidate fails, the base setting is kept, with a warning, and its rows say ``health``.

Validation split: for the procedural ``shapes`` dataset, fresh draws from another seed (same distribution, no
image in common with either split); for other datasets, test images after the first ``eval.num_reference``.

Deviations:
- MAR searched with FID on 50k samples. FID on a few hundred samples is biased upwards by an amount that depends
  on the samples' own spread, so it can rank settings of different diversity (temperature, CFG) otherwise than FID
  on many samples does; measured at tiny, KL + AR + Diffusion Loss: validation FID (200 samples) 244.6 for CFG 3
  constant at temperature 0.8 and 254.1 for CFG 3 linear, test FID (1000 samples) 347.3 for the first. KID is
  unbiased at any sample count, hence the default ``eval.tune_metric = "kid"``.
- KID on a few hundred samples is still noisy, and a small validation reference adds its own noise: measured at
  tiny on one VQ + AR + CE model, KID of 200 samples ranked CFG 1 first against 200, 1000 or 5000 validation images,
  500 samples against 200 or 1000 ranked CFG 3 linear first, and only 500 against 5000 ranked CFG 3 at temperature
  0.8 first, the order of test FID on 1000 samples (91.0 / 77.3 for CFG 1 / CFG 3 at 0.8). Rendering and featurising
  5000 ``shapes`` images takes about a second, hence ``eval.tune_reference = 5000`` in the shipped sweeps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchkit.core import distributed as bdist
from benchkit.core.config import TUNE_METRICS, EvalConfig
from benchkit.core.errors import ConfigError
from benchkit.core.files import atomic_write_text
from benchkit.core.identity import fingerprint
from benchkit.data.loading import load_dataset
from benchkit.metrics.frechet import fid_from_features
from benchkit.metrics.health import HealthSummary, SampleHealth
from benchkit.metrics.quality import cleanfid_kid
from benchkit.sampling.generate import TUNABLE, SampleSettings, balanced_labels, candidates
from benchkit.training.artifacts import TrainedRun, base_seed_config, run_dir

log = logging.getLogger(__name__)

VALIDATION_SEED_OFFSET = 1_000_003  # shapes: validation draws use this seed offset (train 2s, test 2s + 1)


def pick_best(
    options: Sequence[SampleSettings], score: Callable[[SampleSettings], float]
) -> tuple[SampleSettings, list[tuple[SampleSettings, float]]]:
    """The option with the lowest score (first on ties) and every (option, score) in order."""
    if not options:
        raise ConfigError("nothing to tune: the candidate list is empty")
    scored = [(s, float(score(s))) for s in options]
    best = min(scored, key=lambda item: item[1])[0]
    return best, scored


def validation_images(
    data_name: str, data_options: dict[str, Any], test: torch.Tensor, num_reference: int, n: int, *, image_size: int
) -> torch.Tensor:
    """``n`` uint8 images that are neither training images nor the test reference (see the module docstring)."""
    if data_name == "shapes":
        seed = int(data_options.get("seed", 0)) + VALIDATION_SEED_OFFSET
        opts = {**data_options, "seed": seed, "num_test": n}
        return load_dataset("shapes", split="test", image_size=image_size, **opts).images
    spare = len(test) - num_reference
    if spare < n:
        raise ConfigError(
            f"eval.tune needs {n} validation images after the {num_reference} test reference images, "
            f"but the test split has {len(test)}; lower eval.num_reference or eval.tune_reference"
        )
    return test[num_reference : num_reference + n]


def tune(
    options: Sequence[SampleSettings],
    sample: Callable[[SampleSettings], torch.Tensor],
    features: Callable[[torch.Tensor], torch.Tensor],
    validation: torch.Tensor,
    *,
    what: str = "",
    metric: str = EvalConfig.tune_metric,
    failure: Callable[[SampleSettings], str | None] | None = None,
) -> tuple[SampleSettings, list[tuple[SampleSettings, float]]]:
    """Score each option by ``metric`` (``fid`` or ``kid``) of sample(option) against ``validation`` on
    ``features``; return the best and all scores.

    ``failure``, asked right after an option was sampled, names why its samples failed the sample health check (None
    when they passed): such an option is skipped (score ``inf``, one log line) and never chosen; when every option
    fails, the first (the base setting) is kept."""
    if metric not in TUNE_METRICS:
        raise ConfigError(f"unknown eval.tune_metric {metric!r}; valid: {', '.join(TUNE_METRICS)}")
    t0 = time.perf_counter()
    val_feats = features(validation)
    num_samples = 0
    failed: dict[SampleSettings, str] = {}

    def score(s: SampleSettings) -> float:
        nonlocal num_samples
        images = sample(s)
        problem = failure(s) if failure is not None else None
        if problem is not None:
            failed[s] = problem
            log.warning("%s tuning: skipping %s, its samples failed the health check: %s", what, s.label(), problem)
            return math.inf
        feats = features(images)
        num_samples = len(feats)
        if metric == "fid":
            return fid_from_features(feats, val_feats)
        n = min(len(feats), len(val_feats), 1000)
        return cleanfid_kid(feats.numpy(), val_feats.numpy(), n, seed=0)

    best, scored = pick_best(options, score)
    healthy = [(s, v) for s, v in scored if s not in failed]
    if not healthy:
        best = options[0]
        log.warning(
            "%s tuning: every candidate failed the sample health check; keeping the base setting %s", what, best.label()
        )
    elif best in failed:  # only when the healthy scores are not comparable (NaN)
        best = healthy[0][0]
    log.info(
        "%s tuning: %d settings x %d samples against %d validation images in %.1f s; chose %s",
        what,
        len(scored),
        num_samples,
        len(validation),
        time.perf_counter() - t0,
        best.label(),
    )
    for s, v in scored:
        if s in failed:
            log.info("%s tuning: %-40s skipped (sample health: %s)", what, s.label(), failed[s])
        else:
            log.info("%s tuning: %-40s validation %s %.4g", what, s.label(), metric.upper(), v)
    return best, scored


def rows_to_tune(settings: Sequence[SampleSettings]) -> list[bool]:
    """Which rows ``eval.tune`` searches: the base (first) row and every sweep row that leaves the tuned fields
    (``TUNABLE``) as the base has them, e.g. MAR at another step count; a row that sets a CFG or temperature of
    its own is a deliberate comparison and is kept as it is."""
    base = settings[0]
    return [i == 0 or all(getattr(s, k) == getattr(base, k) for k in TUNABLE) for i, s in enumerate(settings)]


def tune_settings(
    settings: Sequence[SampleSettings],
    grid: Sequence[dict[str, Any]],
    tune_one: Callable[[list[SampleSettings], str], SampleSettings],
) -> list[SampleSettings]:
    """``settings`` with each row of :func:`rows_to_tune` replaced by ``tune_one(candidates, row label)``'s pick
    (repeats dropped, order kept)."""
    out: list[SampleSettings] = []
    for s, search in zip(settings, rows_to_tune(settings)):
        best = tune_one(candidates(s, grid), "" if s is settings[0] else f" [{s.label()}]") if search else s
        if best not in out:
            out.append(best)
    return out


def tune_run(
    run: Any, settings: list[SampleSettings], extractor: Any, test: torch.Tensor, num_classes: int
) -> list[SampleSettings]:
    """``settings`` with the base row and the sweep rows of :func:`rows_to_tune` replaced by their best of
    ``eval.tune`` on the validation split.

    ``run`` is a :class:`benchkit.training.artifacts.TrainedRun`; samples use seed ``cfg.seed + 1`` (the test rows use
    ``cfg.seed``), so the choice is not made on the very samples it is then measured with.
    """

    cfg = run.cfg
    if not cfg.eval.tune:
        return settings
    n = cfg.eval.tune_samples
    val = validation_images(
        cfg.data.name,
        dict(cfg.data.options),
        test,
        cfg.eval.num_reference,
        cfg.eval.tune_reference or n,
        image_size=cfg.data.image_size,
    )
    labels = balanced_labels(n, num_classes)
    reference = run.token_reference()  # computed by evaluate_run from the training images when there is no cache
    health: dict[SampleSettings, HealthSummary] = {}

    def sample(s: SampleSettings) -> torch.Tensor:
        check = SampleHealth(reference)
        images: torch.Tensor = run.sample_images(
            labels,
            s,
            seed=cfg.seed + 1,
            batch_size=cfg.sample.batch_size,
            health=check,
        )
        health[s] = check.summary()
        return images

    def failure(s: SampleSettings) -> str | None:
        h = health.get(s)
        return f"{h.health} ({h.health_reason})" if h is not None and h.failed else None

    def tune_one(options: list[SampleSettings], row: str) -> SampleSettings:
        best, _ = tune(
            options,
            sample,
            extractor.features,
            val,
            what=run.dir.name + row,
            metric=cfg.eval.tune_metric,
            failure=failure,
        )
        return best

    return tune_settings(settings, cfg.eval.tune, tune_one)


TUNE_WAIT_S = 1800.0  # how long a later seed waits for its first seed's tuning (another job process is on it)


def _wait_for_first_seed(path: Path, name: str, poll_s: float = 5.0) -> None:
    """Wait until the first seed's tuning record ``path`` exists, while that seed has been started (its run
    directory holds ``config.json``) and for at most ``TUNE_WAIT_S``: with ``--jobs N`` the first seed may still be
    training or tuning in another process."""
    if path.is_file() or not (path.parent / "config.json").is_file():
        return
    log.info("%s: waiting for its first training seed's tuning", name)
    deadline = time.monotonic() + TUNE_WAIT_S
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(poll_s)


def tune_model(
    run: TrainedRun, settings: list[SampleSettings], extractor: Any, test: torch.Tensor, num_classes: int
) -> tuple[list[SampleSettings], int]:
    """:func:`tune_run` once per model: the first training seed tunes (every time it is evaluated, as a single-seed
    run always has) and stores its choice in its run directory (``tuned-<evaluation>.json``); every other seed
    applies the stored choice. Returns (settings, the seed index they were tuned on). A later seed whose first seed
    has not been tuned (another process has not got there yet, or only this seed was asked for) tunes on its own
    samples, with a warning, and says so in its rows."""
    cfg = run.cfg
    if not cfg.eval.tune:
        return settings, cfg.train.seed_index
    base = base_seed_config(cfg)
    key = fingerprint(
        "tuned",
        [dataclasses.asdict(s) for s in settings],
        cfg.eval.tune,
        cfg.eval.tune_samples,
        cfg.eval.tune_reference,
        cfg.eval.tune_metric,
        cfg.eval.features,
        cfg.eval.num_reference,
    )
    path = run_dir(base) / f"tuned-{key}.json"
    if cfg.train.seed_index != 0 and bdist.is_main():
        _wait_for_first_seed(path, run.dir.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with bdist.stage_lock(path.with_suffix(".lock")):
        if cfg.train.seed_index != 0 and bdist.broadcast_object(path.is_file()):
            stored = json.loads(path.read_text())
            return [SampleSettings(**s) for s in stored["settings"]], int(stored["seed_index"])
        if cfg.train.seed_index != 0:
            log.warning("%s: its first training seed has not been tuned; tuning on this seed's samples", run.dir.name)
            return tune_run(run, settings, extractor, test, num_classes), cfg.train.seed_index
        chosen = tune_run(run, settings, extractor, test, num_classes)
        if bdist.is_main():
            record = {"seed_index": 0, "settings": [dataclasses.asdict(s) for s in chosen]}
            atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return chosen, 0
