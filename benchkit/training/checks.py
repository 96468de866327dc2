"""Every check that can run before any compute: dataset, components, their combination, evaluation settings and
batch sizes against the data. A wrong config fails here in one line, not after minutes of training."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from benchkit.core.compat import Combination, check_combination
from benchkit.core.config import RunConfig
from benchkit.core.errors import ConfigError, DataError
from benchkit.core.registry import DATASETS, FEATURES, GENERATORS, HEADS, TOKENIZERS
from benchkit.data.base import ImageData
from benchkit.data.loading import load_dataset
from benchkit.metrics.features import INCEPTION_ENV, check_protocol, find_inception_weights
from benchkit.metrics.refstats import load_reference_stats
from benchkit.sampling.generate import candidates

log = logging.getLogger(__name__)


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
            raise ConfigError(
                f"dataset {base!r} takes no path, so {cfg.data.name!r} is invalid; "
                f"a folder of your own images is imagefolder:PATH"
            )
        options["path"] = path
    DATASETS.make_config(base, options)
    TOKENIZERS.make_config(cfg.tokenizer.name, cfg.tokenizer.options)
    GENERATORS.make_config(cfg.generator.name, cfg.generator.options)
    combo = check_combination(
        cfg.tokenizer.name,
        cfg.generator.name,
        cfg.head.name,
        tokenizer_options=cfg.tokenizer.options,
        image_size=cfg.data.image_size,
    )
    HEADS.make_config(cfg.head.name, cfg.head.options)
    t = cfg.tokenizer_train
    if t.budget_flops or t.budget_images or t.convergence_points:
        raise ConfigError(
            "training budgets and convergence points apply to generators: set train.budget_flops, "
            "train.budget_images or train.convergence_points, not the tokenizer_train ones"
        )
    if t.seeds != 1 or t.seed_index != 0 or not t.tokenizer_per_seed:
        raise ConfigError(
            "training seeds apply to generators (and their tokenizers): set train.seeds, train.seed_index or "
            "train.tokenizer_per_seed, not the tokenizer_train ones"
        )
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
    candidates(cfg.sample, cfg.eval.tune)  # eval.tune keys and values, before any training
    if cfg.data.options.get("lazy") and cfg.eval.features != "inception":
        raise ConfigError(
            'data.options.lazy = true needs eval.features = "inception": the "dataset" feature network '
            "is trained on every training image held in memory"
        )
    if cfg.eval.reference_stats:  # a missing or malformed file is reported before training
        load_reference_stats(cfg.eval.reference_stats)
    named = cfg.eval.inception_weights or os.environ.get(INCEPTION_ENV)  # 'auto' also refuses a missing named file
    if cfg.eval.features == "inception" or (cfg.eval.features == "auto" and named):
        found, where = find_inception_weights(cfg.eval.inception_weights)
        if found is None:
            raise ConfigError(
                f"eval.features = {cfg.eval.features!r} needs Inception-V3 weights, not found ({where}); benchkit "
                f"never downloads: set eval.inception_weights or ${INCEPTION_ENV} to the file, or use "
                f'eval.features = "dataset"'
            )
    check_protocol(cfg.eval)  # the ADM reference batch, DINOv2 and CLIP weights files: before any compute


def check_sizes(cfg: RunConfig, train: ImageData) -> None:
    for stage, tc in (("tokenizer_train", cfg.tokenizer_train), ("train", cfg.train)):
        if tc.batch_size > len(train):
            raise DataError(
                f"dataset {cfg.data.name!r} has {len(train)} training images, fewer than one batch "
                f"({stage}.batch_size = {tc.batch_size}); lower the batch size"
            )
