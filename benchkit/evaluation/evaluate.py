"""Measure a trained run or tokenizer and append its rows to a results directory.

Quality comes from ``benchkit.metrics`` (torch-fidelity and clean-fid on the same features), cost from
``benchkit.metrics.cost`` (params, FLOPs per image, images/s at a stated batch, latency at batch 1, peak memory).
One row per sampling setting, so a sweep over steps / cfg / temperature gives the speed-quality curves. Every
generator row also carries the sample health check of its samples (``benchkit.metrics.health``: ``health`` =
ok / diverged / collapsed and the figures it rests on), so a numerically meaningless row is marked in the table.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from benchkit.core import distributed as bdist
from benchkit.core.config import RunConfig
from benchkit.core.identity import fingerprint
from benchkit.core.progress import progress_bar
from benchkit.core.provenance import git_state
from benchkit.data.base import ImageData
from benchkit.evaluation.deviations import head_deviations
from benchkit.evaluation.protocols import adm_quality, extra_quality, protocol_labels, row_identity, sample_chunks
from benchkit.evaluation.tuning import rows_to_tune, tune_model
from benchkit.metrics import cost
from benchkit.metrics.configured import cache_dir, config_extractor, reference_key
from benchkit.metrics.cost import backbone_params
from benchkit.metrics.health import SampleHealth
from benchkit.metrics.quality import generation_metrics
from benchkit.metrics.refstats import streamed_fid
from benchkit.results.store import append_row, has_row, tuning_selection
from benchkit.sampling.generate import SampleSettings, balanced_labels
from benchkit.sampling.grids import save_grid
from benchkit.training.artifacts import TrainedRun, model_fingerprint, model_meta, run_fingerprint
from benchkit.training.compute import run_train_flops
from benchkit.training.convergence import row_fields

log = logging.getLogger(__name__)


def settings_from(cfg: RunConfig) -> list[SampleSettings]:
    """The base sampling setting plus every ``eval.sweep`` entry (each overrides the base)."""
    out = [cfg.sample.settings()]
    for extra in cfg.eval.sweep:
        s = cfg.sample.replace(**extra)
        if s not in out:
            out.append(s)
    return out


def resolve_settings(run: TrainedRun, settings: list[SampleSettings]) -> list[SampleSettings]:
    """Fill the model's defaults into each setting and drop repeats, so that a sweep entry equal to the base
    setting (MAR's ``steps = 16`` when 16 is its default) is measured once. The defaults are config fields: a
    generator config's ``steps`` (generation steps) and a head config's ``sampling_steps`` (diffusion steps)."""
    steps = _config_default(run.generator.cfg, "steps")
    diffusion_steps = _config_default(run.generator.head.cfg, "sampling_steps")
    out: list[SampleSettings] = []
    for s in settings:
        s = dataclasses.replace(
            s, steps=s.steps if s.steps is not None else steps, diffusion_steps=s.diffusion_steps or diffusion_steps
        )
        if s not in out:
            out.append(s)
    return out


def _config_default(config: Any, name: str) -> int | None:
    """The value of field ``name`` of a component's config dataclass, None when it has no such field."""
    if dataclasses.is_dataclass(config) and name in {f.name for f in dataclasses.fields(config)}:
        return int(getattr(config, name))
    return None


def next_device(cfg: RunConfig) -> torch.device:
    """The run's device."""
    return bdist.pick_device(cfg.device)


def identity_fields(cfg: RunConfig) -> dict[str, Any]:
    return {
        "dataset": cfg.data.name,
        "seed": cfg.seed,
        "git_sha": git_state()["git_sha"],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "device": str(next_device(cfg)),
        "threads": torch.get_num_threads(),
    }


def evaluate_run(
    run: TrainedRun,
    train: ImageData,
    test: ImageData,
    results_dir: Path,
    settings: list[SampleSettings] | None = None,
    *,
    skip_done: bool = True,
) -> list[dict[str, Any]]:
    """Sample, measure quality and cost for each setting, append one row each; returns the rows."""
    cfg = run.cfg
    settings = resolve_settings(run, settings or settings_from(cfg))
    extractor = config_extractor(cfg, train)
    kept = {s for s, searched in zip(settings, rows_to_tune(settings)) if not searched}
    run.token_reference(train.images)  # the sample health reference, kept on the run (tuning uses it too)
    # eval.tune: the best base setting, chosen once per model (on its first training seed)
    settings, tuned_on = tune_model(run, settings, extractor, test.images, train.num_classes)
    model = run_fingerprint(cfg)
    evaluation = (
        cfg.eval.features,
        cfg.eval.num_samples,
        cfg.eval.num_reference,
        cfg.eval.cost_batch_size,
        *row_identity(cfg.eval),  # nothing at the default protocol settings: earlier row ids stay
    )
    # rows whose setting the tuning chose replace those an earlier tuning of this model and evaluation chose
    tuned_in = fingerprint("tuned-rows", model, *evaluation) if cfg.eval.tune else None
    real = test.images[: cfg.eval.num_reference]
    labels = balanced_labels(cfg.eval.num_samples, train.num_classes)
    params = cost.count_params(run.generator)
    rows, chosen = [], []
    with progress_bar(f"evaluating {run.dir.name}", len(settings)) as sweep_bar:
        for i, s in enumerate(settings):
            row_id = fingerprint("gen-row", model, s, *evaluation)
            tuned = tuned_in is not None and s not in kept
            if tuned:
                chosen.append(row_id)
            with bdist.stage_lock(row_lock(results_dir, row_id)):  # one writer per row, even across processes
                row = _measure_generator(
                    run,
                    s,
                    row_id,
                    labels,
                    real,
                    extractor,
                    params,
                    results_dir,
                    skip_done,
                    first=s == settings[0],
                    tuned_in=tuned_in if tuned else None,
                    tuned_on=tuned_on if tuned else None,
                )
            if row is not None:
                rows.append(row)
            sweep_bar(i + 1, len(settings))
    if tuned_in is not None and bdist.is_main():
        append_row(results_dir, tuning_selection(tuned_in, chosen))
    if bdist.is_main() and cfg.train.seed_index == 0:  # one grid per model (`benchkit sample RUN` draws any seed's)
        grid_labels = balanced_labels(train.num_classes * cfg.sample.grid_per_class, train.num_classes).sort().values
        grid = run.sample_images(
            grid_labels,
            settings[0],
            seed=cfg.seed,
            batch_size=cfg.sample.batch_size,
        )
        save_grid(grid, run.dir / "samples.png", nrow=cfg.sample.grid_per_class)
    return rows


def row_lock(results_dir: Path, row_id: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    return results_dir / f".row-{row_id}.lock"


def _measure_generator(
    run: TrainedRun,
    s: SampleSettings,
    row_id: str,
    labels: torch.Tensor,
    real: torch.Tensor,
    extractor: Any,
    params: int,
    results_dir: Path,
    skip_done: bool,
    *,
    first: bool,
    tuned_in: str | None = None,
    tuned_on: int | None = None,
) -> dict[str, Any] | None:
    """One generator row (rank 0 returns it; every rank samples its share). Called under the row's lock.
    ``tuned_in``: the key of the tuned rows this one belongs to (see
    :func:`benchkit.results.store.tuning_selection`); ``tuned_on`` the training seed index the tuning ran on."""
    cfg = run.cfg
    if skip_done and bdist.broadcast_object(has_row(results_dir, row_id)):  # rank 0 decides for every rank
        log.info("%s [%s] already evaluated; skipping", run.dir.name, s.label())
        return None
    t0 = time.perf_counter()
    health = SampleHealth(run.token_reference())  # sees every sampled token batch before decoding
    if cfg.eval.protocol == "adm":  # ADM's evaluator against eval.reference_batch, samples streamed in chunks
        quality: dict[str, Any] = {}
        if bdist.is_main():  # one process samples and scores (ADM's precision/recall need every feature at once)
            chunks = sample_chunks(run, labels, s, seed=cfg.seed, chunk=4 * cfg.sample.batch_size, health=health)
            quality = adm_quality(chunks, labels, cfg, next_device(cfg))
        sample_time = time.perf_counter() - t0
        health.all_reduce()
        if not bdist.is_main():
            return None
        first = False  # no seed spread: it would sample everything again
    elif cfg.eval.reference_stats:  # FID only, against the stored statistics, samples streamed in chunks
        with progress_bar(f"sampling {s.label()}", len(labels)) as bar:
            quality = streamed_fid(
                lambda lab, sd: run.sample_images(
                    lab,
                    s,
                    seed=sd,
                    batch_size=cfg.sample.batch_size,
                    health=health,
                ),
                labels,
                extractor,
                cfg.eval.reference_stats,
                chunk=4 * cfg.sample.batch_size,
                seed=cfg.seed,
            )
        sample_time = time.perf_counter() - t0
        health.all_reduce()
        if not bdist.is_main():
            return None
        first = False  # no seed spread: it would sample everything again
    else:
        with progress_bar(f"sampling {s.label()}", len(labels)) as bar:
            fake = run.sample_images(
                labels,
                s,
                seed=cfg.seed,
                batch_size=cfg.sample.batch_size,
                distributed=True,
                progress=bar,
                health=health,
            )
        sample_time = time.perf_counter() - t0
        health.all_reduce()
        if not bdist.is_main():
            return None
        quality = generation_metrics(
            fake,
            real,
            extractor,
            cache_dir=cache_dir(cfg),
            ref_key=reference_key(cfg, len(real)),
            labels=labels,
            prc=cfg.eval.prc,
            device=next_device(cfg),
            fid_inf=True,
        )
        quality.update(extra_quality(fake, real, cfg, next_device(cfg)))  # cmmd, fd_dinov2 when asked for
    checked = health.summary()
    if checked.failed:
        log.warning("%s [%s]: samples %s: %s", run.dir.name, s.label(), checked.health, checked.health_reason)
    # the sampling seed spread and the cost columns are measured on a model's first training seed only: the cost is
    # the architecture's, the same for every seed, and a later seed's table row takes both from the first seed's
    first_seed = cfg.train.seed_index == 0
    if cfg.eval.seed_spread and first and first_seed:
        quality["seed_spread_fid"] = _seed_spread(run, s, cfg, labels, real, extractor, quality["fid"])
    speed = sampling_cost(run, s, cfg) if first_seed else {}
    meta = model_meta(run.dir)
    row = {
        "row_id": row_id,
        "kind": "generator",
        "run": run.dir.name,
        "tokenizer": cfg.tokenizer.name,
        "generator": cfg.generator.name,
        "head": cfg.head.name,
        "token_kind": run.combo.kind,
        "steps": s.steps,
        "cfg": s.cfg,
        "cfg_schedule": s.cfg_schedule,
        "temperature": s.temperature,
        "diffusion_steps": s.diffusion_steps,
        "head_deviations": head_deviations(cfg.head.name, cfg.head.options, sampling_steps=s.diffusion_steps),
        **protocol_labels(cfg, len(real)),
        **quality,
        **checked.row(),
        "params": params,
        "backbone_params": backbone_params(run.generator),
        "sample_time_s": sample_time,
        **speed,
        **{k: meta.get(k) for k in ("train_images_per_s", "train_time_s")},
        "train_lr": cfg.train.lr,
        "train_steps": cfg.train.steps,
        "train_flops": run_train_flops(run),
        **row_fields(run.dir),
        "config_fingerprint": run_fingerprint(cfg),
        "model": model_fingerprint(cfg),
        "seed_index": cfg.train.seed_index,
        **identity_fields(cfg),
    }
    if tuned_in is not None:
        row["tuned_in"] = tuned_in
        row["tuned_on_seed"] = tuned_on
    append_row(results_dir, row)
    log.info(
        "%s [%s]: FID %.2f  IS %.2f  %.1f img/s",
        run.dir.name,
        s.label(),
        row.get("fid", math.nan),
        row.get("is_mean", math.nan),
        row.get("images_per_s", math.nan),
    )
    return row


def _seed_spread(
    run: TrainedRun,
    s: SampleSettings,
    cfg: RunConfig,
    labels: torch.Tensor,
    real: torch.Tensor,
    extractor: Any,
    fid: float,
) -> float:
    """|FID(seed) - FID(seed + 1)| for the same model and setting: differences below this are sampling noise."""
    other = run.sample_images(
        labels,
        s,
        seed=cfg.seed + 1,
        batch_size=cfg.sample.batch_size,
    )
    q = generation_metrics(
        other,
        real,
        extractor,
        cache_dir=cache_dir(cfg),
        ref_key=reference_key(cfg, len(real)),
        labels=None,
        prc=False,
        device=next_device(cfg),
        clean_fid=False,
    )
    return abs(float(q["fid"]) - fid)


def sampling_cost(run: TrainedRun, s: SampleSettings, cfg: RunConfig) -> dict[str, Any]:
    """Images/s and FLOPs per image at ``eval.cost_batch_size``, latency of one image, peak memory."""
    bs, device = cfg.eval.cost_batch_size, next_device(cfg)
    cost.reset_peak_memory(device)  # this row's peak only, not training's or an earlier row's

    def sample(n: int) -> torch.Tensor:
        return run.sample_images(
            balanced_labels(n, run.generator.num_classes),
            s,
            seed=cfg.seed,
            batch_size=n,
        )

    # the counted call doubles as the throughput warm-up; per-image FLOPs at the stated batch (a few ops, such as
    # the diffusion timestep embedding, run once per batch, so batch 1 would count them once per image)
    flops = round(cost.flops_per_call(lambda: sample(bs)) / bs)
    ips = cost.throughput(lambda: sample(bs), batch_size=bs, warmup=0, repeats=cfg.eval.cost_repeats)
    lat = cost.latency(lambda: sample(1), warmup=1, repeats=cfg.eval.cost_repeats)
    return {
        "images_per_s": ips,
        "sample_batch_size": bs,
        "latency_s": lat,
        "flops_per_image": flops,
        "peak_mem_mb": cost.peak_memory_mb(device),
    }
