"""Train and load the stages of a run: data -> tokenizer (once, shared) -> token cache -> generator.

Layout under ``out_dir``::

    tokenizers/<name>-<fp>/   checkpoint.* (training state), model.* (final weights), tokens-<kind>.*, log.csv
    runs/<tok>-<gen>-<head>-<fp>/   checkpoint.*, model.*, config.json, env.json, log.csv, samples.png

A tokenizer's fingerprint covers the data, its options, its training and the seed, so every generator of every
comparison that uses the same tokenizer config reuses the same trained weights and token cache.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from benchkit.checkpoint import atomic_write, checkpoint_exists, load_checkpoint, load_module_weights, save_checkpoint
from benchkit.compat import Combination, check_combination
from benchkit.config import RunConfig, fingerprint, from_dict
from benchkit.data import load_dataset
from benchkit.data.base import ImageData, to_float
from benchkit.distributed import is_main, pick_device
from benchkit.errors import CheckpointError, DataError
from benchkit.interfaces import Batch, TokenKind
from benchkit.provenance import environment
from benchkit.registry import GENERATORS, TOKENIZERS
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


def check(cfg: RunConfig) -> Combination:
    """All checks that can run before any compute: names, options, combination, batch vs dataset size."""
    TOKENIZERS.make_config(cfg.tokenizer.name, cfg.tokenizer.options)
    GENERATORS.make_config(cfg.generator.name, cfg.generator.options)
    combo = check_combination(
        cfg.tokenizer.name, cfg.generator.name, cfg.head.name,
        tokenizer_options=cfg.tokenizer.options, image_size=cfg.data.image_size,
    )
    from benchkit.registry import HEADS

    HEADS.make_config(cfg.head.name, cfg.head.options)
    return combo


def tokenizer_fingerprint(cfg: RunConfig) -> str:
    """Identity of a trained tokenizer: data, tokenizer options, its training stage, seed."""
    return fingerprint("tokenizer", cfg.data, cfg.tokenizer, cfg.tokenizer_train, cfg.seed)


def run_fingerprint(cfg: RunConfig) -> str:
    """Identity of a trained generator: its tokenizer plus generator, head, training and seed."""
    return fingerprint("run", tokenizer_fingerprint(cfg), cfg.generator, cfg.head, cfg.train, cfg.seed)


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
    fp, tdir = tokenizer_fingerprint(cfg), tokenizer_dir(cfg)
    tdir.mkdir(parents=True, exist_ok=True)
    module = build_tokenizer(cfg, device)
    with FileLock(str(tdir / ".lock")):
        if checkpoint_exists(tdir / MODEL):
            meta = load_module_weights(module, tdir / MODEL)
            if meta.get("fingerprint") != fp:
                raise CheckpointError(f"{str(tdir)!r} holds a tokenizer of another config")
            return TrainedTokenizer(module.eval(), tdir, fp, None)
        _check_sizes(cfg, train)
        result = fit(
            module,
            lambda m, images: m.loss(images),
            lambda idx: to_float(train.images[idx]).to(device),
            len(train),
            cfg.tokenizer_train,
            tdir,
            seed=cfg.seed,
            fingerprint=fp,
            desc=f"tokenizer {cfg.tokenizer.name}",
            resume=resume,
            show_progress=progress,
        )
        with torch.no_grad():
            module.calibrate(to_float(train.images[:2048]).to(device))
        if is_main():
            meta = {"fingerprint": fp, "tokenizer": cfg.tokenizer.name, "options": cfg.tokenizer.options,
                    "train_images_per_s": result.images_per_s, "train_time_s": result.time_s, "steps": result.steps}
            save_checkpoint(tdir / MODEL, {f"model.{k}": v for k, v in module.state_dict().items()}, meta)
    return TrainedTokenizer(module.eval(), tdir, fp, result)


@torch.no_grad()
def token_cache(tok: TrainedTokenizer, kind: TokenKind, data: ImageData, batch_size: int = 256) -> torch.Tensor:
    """What the tokenizer's ``encode_for_cache`` gives for every training image, computed once and stored."""
    path = tok.dir / f"tokens-{kind}"
    with FileLock(str(tok.dir / ".lock")):
        if checkpoint_exists(path):
            tensors, meta = load_checkpoint(path)
            if meta.get("n") == len(data) and meta.get("fingerprint") == tok.fingerprint:
                return tensors["cache"]
        device = next(tok.module.parameters()).device
        parts = [
            tok.module.encode_for_cache(to_float(data.images[i : i + batch_size]).to(device), kind).cpu()
            for i in range(0, len(data), batch_size)
        ]
        cache = torch.cat(parts)
        if is_main():
            save_checkpoint(path, {"cache": cache}, {"n": len(data), "kind": kind, "fingerprint": tok.fingerprint})
        log.info("cached %s tokens of %d images in %s", kind, len(data), path)
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
    device = pick_device(cfg.device)
    train, _ = splits or load_splits(cfg)
    _check_sizes(cfg, train)
    tok = train_tokenizer(cfg, train, resume=resume, progress=progress)
    cache = token_cache(tok, combo.kind, train)
    labels = train.labels
    rdir, fp = run_dir(cfg), run_fingerprint(cfg)
    gen = build_generator(cfg, combo, train.num_classes, device)
    if is_main():
        write_run_files(cfg, rdir, device)
    if checkpoint_exists(rdir / MODEL):
        load_module_weights(gen, rdir / MODEL)
        return TrainedRun(cfg, gen.eval(), tok, combo, rdir, None)

    def get_batch(idx: torch.Tensor) -> Batch:
        tokens = tok.module.tokens_from_cache(cache[idx].to(device), combo.kind)
        return Batch(tokens, labels[idx].to(device))

    result = fit(gen, lambda m, b: m.loss(b), get_batch, len(train), cfg.train, rdir, seed=cfg.seed, fingerprint=fp,
                 desc=f"{combo.tokenizer}+{combo.generator}+{combo.head}", resume=resume, show_progress=progress)
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
    cfg = from_dict(RunConfig, json.loads((rdir / "config.json").read_text()), "")
    if not checkpoint_exists(rdir / MODEL):
        raise CheckpointError(f"run {str(rdir)!r} has not finished training; rerun `benchkit train` with --resume")
    combo = check(cfg)
    device = pick_device(cfg.device)
    tdir = tokenizer_dir(replace(cfg, out_dir=str(rdir.parent.parent)))
    tok_module = build_tokenizer(cfg, device)
    meta = load_module_weights(tok_module, tdir / MODEL)
    tok = TrainedTokenizer(tok_module.eval(), tdir, meta["fingerprint"], None)
    num_classes = int(json.loads((rdir / f"{MODEL}.json").read_text())["num_classes"])
    gen = build_generator(cfg, combo, num_classes, device)
    load_module_weights(gen, rdir / MODEL)
    return TrainedRun(cfg, gen.eval(), tok, combo, rdir, None)
