"""Train a tokenizer once per (data, tokenizer config, training, seed), or load it when it is already trained.

The stage runs under a file lock in its directory, so concurrent processes (sweep shards, repeated commands) train
it once; under torchrun only rank 0 takes the lock (``distributed.stage_lock``) and decides for every rank.
"""

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
from benchkit.data.base import ImageData, to_float
from benchkit.metrics.perceptual import lpips_loss
from benchkit.training.artifacts import (
    MODEL,
    TrainedTokenizer,
    build_tokenizer,
    tokenizer_dir,
    tokenizer_fingerprint,
    tokenizer_seed,
)
from benchkit.training.checks import check_sizes
from benchkit.training.tblog import reconstruction_preview
from benchkit.training.trainer import fit

log = logging.getLogger(__name__)


def train_tokenizer(
    cfg: RunConfig, train: ImageData, *, resume: bool = True, progress: bool = True
) -> TrainedTokenizer:
    """Train the tokenizer once (or load it), calibrate its continuous scale, and save final weights."""
    device = pick_device(cfg.device)
    bdist.init_distributed(device)
    fp, tdir = tokenizer_fingerprint(cfg), tokenizer_dir(cfg)
    tdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tokenizer_seed(cfg))
    module = build_tokenizer(cfg, device)
    with bdist.stage_lock(tdir / ".lock"):
        if bdist.broadcast_object(checkpoint_exists(tdir / MODEL)):
            meta = load_module_weights(module, tdir / MODEL)
            if meta.get("fingerprint") != fp:
                raise CheckpointError(f"{str(tdir)!r} holds a tokenizer of another config")
            return TrainedTokenizer(module.eval(), tdir, fp, None)
        check_sizes(cfg, train)

        def get_images(idx: torch.Tensor) -> torch.Tensor:
            images = to_float(train.images[idx]).to(device)
            return random_mirror(images, images.flip(-1)) if cfg.tokenizer_train.hflip else images

        result = fit(
            module,
            lpips_loss(cfg.tokenizer_train.lpips_weight, path=cfg.eval.lpips_weights),  # m.loss alone at weight 0
            get_images,
            len(train),
            cfg.tokenizer_train,
            tdir,
            seed=tokenizer_seed(cfg),
            fingerprint=fp,
            desc=f"tokenizer {cfg.tokenizer.name}",
            resume=resume,
            show_progress=progress,
            preview=reconstruction_preview(train.images[:8]) if cfg.tokenizer_train.tensorboard else None,
        )
        with torch.no_grad():
            module.calibrate(to_float(train.images[:2048]).to(device))
        if is_main():
            meta = {
                "fingerprint": fp,
                "tokenizer": cfg.tokenizer.name,
                "options": cfg.tokenizer.options,
                "train_images_per_s": result.images_per_s,
                "train_time_s": result.time_s,
                "steps": result.steps,
            }
            save_checkpoint(tdir / MODEL, {f"model.{k}": v for k, v in module.state_dict().items()}, meta)
    return TrainedTokenizer(module.eval(), tdir, fp, result)


def random_mirror(x: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Per row, ``x`` or ``mirrored`` with equal odds (torch's global RNG: seeded and checkpointed by ``fit``)."""
    pick = torch.rand(len(x)) < 0.5
    return torch.where(pick.view(-1, *[1] * (x.dim() - 1)).to(x.device), mirrored, x)
