"""Train a generator: the whole path of one config (checks, data, tokenizer, token cache, generator), each stage
done once and reused. Model weights are initialised from ``torch.manual_seed(cfg.seed)``, so a run does not depend
on what ran before it in the process."""

from __future__ import annotations

import logging

import torch

from benchkit.core import distributed as bdist
from benchkit.core.checkpoint import (
    checkpoint_exists,
    load_module_weights,
    save_checkpoint,
)
from benchkit.core.config import RunConfig
from benchkit.core.distributed import is_main, pick_device
from benchkit.core.errors import CheckpointError
from benchkit.core.interfaces import Batch
from benchkit.data.base import ImageData
from benchkit.training.artifacts import MODEL, TrainedRun, build_generator, run_dir, run_fingerprint, write_run_files
from benchkit.training.checks import check, check_sizes, load_splits
from benchkit.training.compute import apply_budget, config_step_flops
from benchkit.training.convergence import convergence_hook, convergence_steps
from benchkit.training.softcodes import latent_cache_tokenizer, soft_code_batch, soft_codes_of
from benchkit.training.tblog import require_tensorboard, sample_preview
from benchkit.training.tokenizer import random_mirror, train_tokenizer
from benchkit.training.tokens import token_cache
from benchkit.training.trainer import fit

log = logging.getLogger(__name__)


def train_generator(
    cfg: RunConfig, *, resume: bool = True, progress: bool = True, splits: tuple[ImageData, ImageData] | None = None
) -> TrainedRun:
    """The whole training path of one config: checks, data, tokenizer, token cache, generator."""
    combo = check(cfg)
    soft = soft_codes_of(cfg, combo.kind)  # None unless generator.options.soft_target_temperature > 0
    for where, stage in (("tokenizer_train", cfg.tokenizer_train), ("train", cfg.train)):
        if stage.tensorboard:  # here, not in check(): loading a run for sampling needs no TensorBoard
            require_tensorboard(f"{where}.tensorboard")
    device = pick_device(cfg.device)
    bdist.init_distributed(device)
    train, test = splits or load_splits(cfg)
    check_sizes(cfg, train)
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
            cached = cache[idx] if mirror is None else random_mirror(cache[idx], mirror[idx])
            if soft is not None:
                return soft_code_batch(tok.module, cached.to(device), labels[idx].to(device), soft)
            tokens = tok.module.tokens_from_cache(cached.to(device), combo.kind)
            return Batch(tokens, labels[idx].to(device))

        at = convergence_steps(cfg.train.steps, cfg.train.convergence_points)
        # only rank 0 scores the points (the others wait at the barrier), so only it loads the feature network
        hook = (
            convergence_hook(
                cfg,
                tok.module,
                combo.kind,
                train.num_classes,
                train,
                test,
                rdir,
                config_step_flops(cfg, gen, combo.spec),
            )
            if at and is_main()
            else None
        )
        result = fit(
            gen,
            lambda m, b: m.loss(b),  # type: ignore[operator]  # the Generator protocol's loss
            get_batch,
            len(train),
            cfg.train,
            rdir,
            seed=cfg.seed,
            fingerprint=fp,
            desc=f"{combo.tokenizer}+{combo.generator}+{combo.head}",
            resume=resume,
            show_progress=progress,
            preview=sample_preview(tok.module, combo.kind, train.num_classes, cfg.sample, seed=cfg.seed)
            if cfg.train.tensorboard
            else None,
            evaluate_at=at,
            evaluate=hook,
        )
        if is_main():
            meta = {
                "fingerprint": fp,
                "train_images_per_s": result.images_per_s,
                "train_time_s": result.time_s,
                "steps": result.steps,
                "final_loss": result.final_loss,
                "num_classes": train.num_classes,
            }
            save_checkpoint(rdir / MODEL, {f"model.{k}": v for k, v in gen.state_dict().items()}, meta)
    return TrainedRun(cfg, gen.eval(), tok, combo, rdir, result)
