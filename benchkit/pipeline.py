"""Train and load the stages of a run: data -> tokenizer (once, shared) -> token cache -> generator.

Layout under ``out_dir``::

    tokenizers/<name>-<fp>/   checkpoint.* (training state), model.* (final weights), tokens-<kind>.*, log.csv
    runs/<tok>-<gen>-<head>-<fp>/   checkpoint.*, model.*, config.json, env.json, log.csv, samples.png

A tokenizer's fingerprint covers the data, its options, its training and the seed, so every generator of every
comparison that uses the same tokenizer config reuses the same trained weights and token cache.

Each stage (tokenizer, token cache, generator) runs under a file lock in its directory, so concurrent processes
(sweep shards, repeated commands) train and write each artefact once; under torchrun only rank 0 takes the lock
(``distributed.stage_lock``) and rank 0 decides, for every rank, whether a stage is already done. Model weights
are initialised from ``torch.manual_seed(cfg.seed)``, so a run does not depend on what ran before it in the process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchkit import distributed as bdist
from benchkit.checkpoint import (
    apply_weights,
    atomic_write,
    checkpoint_exists,
    load_checkpoint,
    load_module_weights,
    save_checkpoint,
)
from benchkit.compat import Combination, check_combination
from benchkit.compute import apply_budget, config_step_flops
from benchkit.config import RunConfig, fingerprint, from_dict
from benchkit.convergence import convergence_hook, convergence_steps
from benchkit.data.loading import load_dataset
from benchkit.data.base import ImageData, to_float
from benchkit.distributed import is_main, pick_device
from benchkit.errors import CheckpointError, ConfigError, DataError
from benchkit.interfaces import Batch, TokenKind
from benchkit.metrics.features import INCEPTION_ENV, find_inception_weights
from benchkit.metrics.perceptual import lpips_loss
from benchkit.progress import progress_bar
from benchkit.provenance import environment
from benchkit.registry import DATASETS, FEATURES, GENERATORS, HEADS, TOKENIZERS
from benchkit.softcodes import latent_cache_tokenizer, soft_code_batch, soft_codes_of
from benchkit.tblog import reconstruction_preview, require_tensorboard, sample_preview
from benchkit.trainer import TrainResult, fit

log = logging.getLogger(__name__)
MODEL = "model"


@dataclass
class TrainedTokenizer:
    """A trained (or loaded) tokenizer and where it lives."""

    module: nn.Module
    dir: Path
    fingerprint: str
    result: TrainResult | None


@dataclass
class TrainedRun:
    """A trained (or loaded) generator with its tokenizer and combination."""

    cfg: RunConfig
    generator: nn.Module
    tokenizer: TrainedTokenizer
    combo: Combination
    dir: Path
    result: TrainResult | None


def load_splits(cfg: RunConfig) -> tuple[ImageData, ImageData]:
    """Train and held-out splits of the configured dataset."""
    kw: dict[str, Any] = dict(root=cfg.data.root, image_size=cfg.data.image_size, **cfg.data.options)
    train = load_dataset(cfg.data.name, split="train", **kw)
    test = load_dataset(cfg.data.name, split="test", **kw)
    return train, test


def check(cfg: RunConfig, *, include_eval: bool = True) -> Combination:
    """All checks that can run before any compute: names and options of the dataset and the three components,
    their combination and, with ``include_eval``, the evaluation settings (``check_eval``)."""
    base, colon, path = cfg.data.name.partition(":")
    options = dict(cfg.data.options)
    if colon:  # NAME:PATH, as load_dataset reads it
        config = DATASETS.get(base).config
        if config is None or "path" not in {f.name for f in dataclasses.fields(config)}:
            raise ConfigError(f"dataset {base!r} takes no path, so {cfg.data.name!r} is invalid; "
                              f"a folder of your own images is imagefolder:PATH")
        options["path"] = path
    DATASETS.make_config(base, options)
    TOKENIZERS.make_config(cfg.tokenizer.name, cfg.tokenizer.options)
    GENERATORS.make_config(cfg.generator.name, cfg.generator.options)
    combo = check_combination(
        cfg.tokenizer.name, cfg.generator.name, cfg.head.name,
        tokenizer_options=cfg.tokenizer.options, image_size=cfg.data.image_size,
    )
    HEADS.make_config(cfg.head.name, cfg.head.options)
    t = cfg.tokenizer_train
    if t.budget_flops or t.budget_images or t.convergence_points:
        raise ConfigError("training budgets and convergence points apply to generators: set train.budget_flops, "
                          "train.budget_images or train.convergence_points, not the tokenizer_train ones")
    if include_eval:
        check_eval(cfg)
    return combo


def check_eval(cfg: RunConfig) -> None:
    """Feature network name, every ``eval.sweep`` setting, and Inception weights on disk when ``inception`` is set
    (benchkit never downloads, so a missing file is reported before training rather than after it)."""
    FEATURES.get(cfg.eval.features)
    for i, extra in enumerate(cfg.eval.sweep):
        try:
            cfg.sample.replace(**extra)
        except ConfigError as e:
            raise ConfigError(f"eval.sweep[{i}]: {e}") from None
    from benchkit.tuning import candidates

    candidates(cfg.sample, cfg.eval.tune)  # eval.tune keys and values, before any training
    if cfg.data.options.get("lazy") and cfg.eval.features != "inception":
        raise ConfigError('data.options.lazy = true needs eval.features = "inception": the "dataset" feature network '
                          'is trained on every training image held in memory')
    if cfg.eval.reference_stats:  # a missing or malformed file is reported before training
        from benchkit.metrics.refstats import load_reference_stats

        load_reference_stats(cfg.eval.reference_stats)
    named = cfg.eval.inception_weights or os.environ.get(INCEPTION_ENV)  # 'auto' also refuses a missing named file
    if cfg.eval.features == "inception" or (cfg.eval.features == "auto" and named):
        found, where = find_inception_weights(cfg.eval.inception_weights)
        if found is None:
            raise ConfigError(
                f"eval.features = {cfg.eval.features!r} needs Inception-V3 weights, not found ({where}); benchkit "
                f"never downloads: set eval.inception_weights or ${INCEPTION_ENV} to the file, or use "
                f"eval.features = \"dataset\""
            )


# Bumped when code changes what stored tokenizer weights compute (2: GroupNorm groups of >= 8 channels, norm option), so that
# weights trained by older code are not loaded into a module that would read them differently.
TOKENIZER_REVISION = 2


def tokenizer_fingerprint(cfg: RunConfig) -> str:
    """Identity of a trained tokenizer: code revision, data, tokenizer options, its training stage, seed."""
    return fingerprint("tokenizer", TOKENIZER_REVISION, cfg.data, cfg.tokenizer, cfg.tokenizer_train.identity(), cfg.seed)


def run_fingerprint(cfg: RunConfig) -> str:
    """Identity of a trained generator: its tokenizer plus generator (options with defaults filled in, so a changed
    default size is a new run), head, training (``TrainConfig.identity``: no speed switches) and seed."""
    generator = GENERATORS.make_config(cfg.generator.name, cfg.generator.options)
    return fingerprint("run", tokenizer_fingerprint(cfg), cfg.generator, generator, cfg.head, cfg.train.identity(),
                       cfg.seed)


def tokenizer_dir(cfg: RunConfig) -> Path:
    """Where the tokenizer of this config is (or will be) trained."""
    return Path(cfg.out_dir) / "tokenizers" / f"{cfg.tokenizer.name}-{tokenizer_fingerprint(cfg)}"


def run_dir(cfg: RunConfig) -> Path:
    """Where the generator of this config is (or will be) trained."""
    name = f"{cfg.tokenizer.name}-{cfg.generator.name}-{cfg.head.name}-{run_fingerprint(cfg)}"
    return Path(cfg.out_dir) / "runs" / name


def _check_sizes(cfg: RunConfig, train: ImageData) -> None:
    for stage, tc in (("tokenizer_train", cfg.tokenizer_train), ("train", cfg.train)):
        if tc.batch_size > len(train):
            raise DataError(
                f"dataset {cfg.data.name!r} has {len(train)} training images, fewer than one batch "
                f"({stage}.batch_size = {tc.batch_size}); lower the batch size"
            )


def build_tokenizer(cfg: RunConfig, device: torch.device) -> nn.Module:
    """An untrained tokenizer of this config."""
    return TOKENIZERS.create(cfg.tokenizer.name, image_size=cfg.data.image_size, **cfg.tokenizer.options).to(device)


def train_tokenizer(cfg: RunConfig, train: ImageData, *, resume: bool = True, progress: bool = True) -> TrainedTokenizer:
    """Train the tokenizer once (or load it), calibrate its continuous scale, and save final weights."""
    device = pick_device(cfg.device)
    bdist.init_distributed(device)
    fp, tdir = tokenizer_fingerprint(cfg), tokenizer_dir(cfg)
    tdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    module = build_tokenizer(cfg, device)
    with bdist.stage_lock(tdir / ".lock"):
        if bdist.broadcast_object(checkpoint_exists(tdir / MODEL)):
            meta = load_module_weights(module, tdir / MODEL)
            if meta.get("fingerprint") != fp:
                raise CheckpointError(f"{str(tdir)!r} holds a tokenizer of another config")
            return TrainedTokenizer(module.eval(), tdir, fp, None)
        _check_sizes(cfg, train)
        def get_images(idx: torch.Tensor) -> torch.Tensor:
            images = to_float(train.images[idx]).to(device)
            return _random_mirror(images, images.flip(-1)) if cfg.tokenizer_train.hflip else images

        result = fit(
            module,
            lpips_loss(cfg.tokenizer_train.lpips_weight, path=cfg.eval.lpips_weights),  # m.loss alone at weight 0
            get_images,
            len(train),
            cfg.tokenizer_train,
            tdir,
            seed=cfg.seed,
            fingerprint=fp,
            desc=f"tokenizer {cfg.tokenizer.name}",
            resume=resume,
            show_progress=progress,
            preview=reconstruction_preview(train.images[:8]) if cfg.tokenizer_train.tensorboard else None,
        )
        with torch.no_grad():
            module.calibrate(to_float(train.images[:2048]).to(device))
        if is_main():
            meta = {"fingerprint": fp, "tokenizer": cfg.tokenizer.name, "options": cfg.tokenizer.options,
                    "train_images_per_s": result.images_per_s, "train_time_s": result.time_s, "steps": result.steps}
            save_checkpoint(tdir / MODEL, {f"model.{k}": v for k, v in module.state_dict().items()}, meta)
    return TrainedTokenizer(module.eval(), tdir, fp, result)


def _random_mirror(x: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Per row, ``x`` or ``mirrored`` with equal odds (torch's global RNG: seeded and checkpointed by ``fit``)."""
    pick = torch.rand(len(x)) < 0.5
    return torch.where(pick.view(-1, *[1] * (x.dim() - 1)).to(x.device), mirrored, x)


def _read_cache(path: Path, tok: TrainedTokenizer, n: int) -> torch.Tensor | None:
    """A stored token cache of this tokenizer and dataset size, or None (a damaged cache is recomputed)."""
    if not checkpoint_exists(path):
        return None
    try:
        tensors, meta = load_checkpoint(path)
    except CheckpointError as e:
        log.warning("recomputing the token cache: %s", e)
        return None
    if meta.get("n") == n and meta.get("fingerprint") == tok.fingerprint:
        return tensors["cache"]
    return None


@torch.no_grad()
def token_cache(tok: TrainedTokenizer, kind: TokenKind, data: ImageData, batch_size: int = 256, *,
                mirrored: bool = False) -> torch.Tensor:
    """What the tokenizer's ``encode_for_cache`` gives for every training image (with ``mirrored``, for its
    horizontal mirror image), computed once (by rank 0) and stored."""
    path = tok.dir / f"tokens-{kind}{'-hflip' if mirrored else ''}"
    from benchkit.data.lazy import LazyImages

    if isinstance(data.images, LazyImages):  # a folder larger than memory: sharded, memory-mapped, resumable
        from benchkit.tokencache import sharded_token_cache

        return sharded_token_cache(tok, kind, data.images.folder, path, batch_size, mirrored)  # type: ignore[return-value]
    with bdist.stage_lock(tok.dir / ".lock"):
        cache = _read_cache(path, tok, len(data)) if is_main() else None
        if is_main() and cache is None:
            device = next(tok.module.parameters()).device
            parts = []
            with progress_bar(f"caching {kind} tokens", len(data)) as bar:
                for i in range(0, len(data), batch_size):
                    x = to_float(data.images[i : i + batch_size]).to(device)
                    parts.append(tok.module.encode_for_cache(x.flip(-1) if mirrored else x, kind).cpu())
                    bar(min(i + batch_size, len(data)), len(data))
            cache = torch.cat(parts)
            save_checkpoint(path, {"cache": cache}, {"n": len(data), "kind": kind, "fingerprint": tok.fingerprint,
                                                     "mirrored": mirrored})
            log.info("cached %s tokens of %d %simages in %s", kind, len(data), "mirrored " if mirrored else "", path)
        bdist.barrier()
        if cache is None:  # the other ranks read what rank 0 wrote
            cache = _read_cache(path, tok, len(data))
            assert cache is not None, f"rank {bdist.rank()} found no token cache at {path} after rank 0 wrote it"
    return cache


def build_generator(cfg: RunConfig, combo: Combination, num_classes: int, device: torch.device) -> nn.Module:
    """An untrained generator (with its head) of this config."""
    return GENERATORS.create(
        cfg.generator.name, spec=combo.spec, head=cfg.head.name, head_options=dict(cfg.head.options),
        num_classes=num_classes, **cfg.generator.options,
    ).to(device)


def write_run_files(cfg: RunConfig, rdir: Path, device: torch.device) -> None:
    """config.json and env.json beside the run's weights."""
    rdir.mkdir(parents=True, exist_ok=True)
    atomic_write(rdir / "config.json", lambda p: p.write_text(json.dumps(cfg.to_dict(), indent=1, default=str)))
    atomic_write(rdir / "env.json", lambda p: p.write_text(json.dumps(environment(device), indent=1, default=str)))


def train_generator(cfg: RunConfig, *, resume: bool = True, progress: bool = True,
                    splits: tuple[ImageData, ImageData] | None = None) -> TrainedRun:
    """The whole training path of one config: checks, data, tokenizer, token cache, generator."""
    combo = check(cfg)
    soft = soft_codes_of(cfg, combo.kind)  # None unless generator.options.soft_target_temperature > 0
    for where, stage in (("tokenizer_train", cfg.tokenizer_train), ("train", cfg.train)):
        if stage.tensorboard:  # here, not in check(): loading a run for sampling needs no TensorBoard
            require_tensorboard(f"{where}.tensorboard")
    device = pick_device(cfg.device)
    bdist.init_distributed(device)
    train, test = splits or load_splits(cfg)
    _check_sizes(cfg, train)
    tok = train_tokenizer(cfg, train, resume=resume, progress=progress)
    cache_tok = latent_cache_tokenizer(tok) if soft else tok  # soft targets: latents cached, quantized per batch
    cache = token_cache(cache_tok, combo.kind, train)
    mirror = token_cache(cache_tok, combo.kind, train, mirrored=True) if cfg.train.hflip else None
    labels = train.labels
    torch.manual_seed(cfg.seed)
    gen = build_generator(cfg, combo, train.num_classes, device)
    cfg = apply_budget(cfg, gen, combo.spec)  # train.budget_*: this generator's steps (the RNG is left alone)
    rdir, fp = run_dir(cfg), run_fingerprint(cfg)
    rdir.mkdir(parents=True, exist_ok=True)
    with bdist.stage_lock(rdir / ".lock"):
        if bdist.broadcast_object(checkpoint_exists(rdir / MODEL)):
            meta = load_module_weights(gen, rdir / MODEL)
            if meta.get("fingerprint") != fp:
                raise CheckpointError(f"{str(rdir)!r} holds a generator of another config; use a new --out-dir")
            return TrainedRun(cfg, gen.eval(), tok, combo, rdir, None)
        if is_main():
            write_run_files(cfg, rdir, device)
        gen.bind_tokenizer(tok.module)  # before fit: a resumed run's checkpoint holds the same values

        def get_batch(idx: torch.Tensor) -> Batch:
            cached = cache[idx] if mirror is None else _random_mirror(cache[idx], mirror[idx])
            if soft is not None:
                return soft_code_batch(tok.module, cached.to(device), labels[idx].to(device), soft)
            tokens = tok.module.tokens_from_cache(cached.to(device), combo.kind)
            return Batch(tokens, labels[idx].to(device))

        at = convergence_steps(cfg.train.steps, cfg.train.convergence_points)
        # only rank 0 scores the points (the others wait at the barrier), so only it loads the feature network
        hook = convergence_hook(cfg, tok.module, combo.kind, train.num_classes, train, test, rdir,
                                config_step_flops(cfg, gen, combo.spec)) if at and is_main() else None
        result = fit(gen, lambda m, b: m.loss(b), get_batch, len(train), cfg.train, rdir, seed=cfg.seed,
                     fingerprint=fp, desc=f"{combo.tokenizer}+{combo.generator}+{combo.head}", resume=resume,
                     show_progress=progress, preview=sample_preview(tok.module, combo.kind, train.num_classes, cfg.sample,
                                                                    seed=cfg.seed) if cfg.train.tensorboard else None,
                     evaluate_at=at, evaluate=hook)
        if is_main():
            meta = {"fingerprint": fp, "train_images_per_s": result.images_per_s, "train_time_s": result.time_s,
                    "steps": result.steps, "final_loss": result.final_loss, "num_classes": train.num_classes}
            save_checkpoint(rdir / MODEL, {f"model.{k}": v for k, v in gen.state_dict().items()}, meta)
    return TrainedRun(cfg, gen.eval(), tok, combo, rdir, result)


def load_run(path: str | Path) -> TrainedRun:
    """Load a finished run directory (for ``benchkit sample RUN`` and ``benchkit eval RUN``)."""
    rdir = Path(path)
    if not (rdir / "config.json").is_file():
        raise CheckpointError(f"{str(rdir)!r} is not a run directory (no config.json); train one with `benchkit train`")
    try:
        raw = json.loads((rdir / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(rdir / 'config.json')!r} is corrupt: {e}") from None
    cfg = from_dict(RunConfig, raw, "")
    if not checkpoint_exists(rdir / MODEL):
        raise CheckpointError(f"run {str(rdir)!r} has not finished training; rerun `benchkit train` with --resume")
    combo = check(cfg, include_eval=False)  # sampling needs no feature network; `eval` checks its own settings
    device = pick_device(cfg.device)
    bdist.init_distributed(device)
    tdir = tokenizer_dir(replace(cfg, out_dir=str(rdir.parent.parent)))
    tok_module = build_tokenizer(cfg, device)
    tok_meta = load_module_weights(tok_module, tdir / MODEL)
    if tok_meta.get("fingerprint") != tokenizer_fingerprint(cfg):
        raise CheckpointError(f"tokenizer {str(tdir)!r} does not match {str(rdir / 'config.json')!r}")
    tok = TrainedTokenizer(tok_module.eval(), tdir, tok_meta["fingerprint"], None)
    tensors, meta = load_checkpoint(rdir / MODEL)
    if meta.get("fingerprint") != run_fingerprint(cfg):
        raise CheckpointError(
            f"{str(rdir / 'config.json')!r} does not describe the weights in {str(rdir)!r} (fingerprint "
            f"{run_fingerprint(cfg)} != {meta.get('fingerprint')}); was config.json edited?"
        )
    gen = build_generator(cfg, combo, int(meta["num_classes"]), device)
    apply_weights(gen, tensors, rdir / MODEL)
    return TrainedRun(cfg, gen.eval(), tok, combo, rdir, None)
