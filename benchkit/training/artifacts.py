"""What a trained stage leaves on disk and how it is found again: the tokenizer and run directories, their
fingerprints, the ``model.*`` weights with their metadata, and the loaded forms ``TrainedTokenizer`` / ``TrainedRun``.

Layout under ``out_dir``::

    tokenizers/<name>-<fp>/   checkpoint.* (training state), model.* (final weights), tokens-<kind>.*, log.csv
    runs/<tok>-<gen>-<head>-<fp>/   checkpoint.*, model.*, config.json, env.json, log.csv, samples.png

A tokenizer's fingerprint covers the data, its options, its training and the seed, so every generator of every
comparison that uses the same tokenizer config reuses the same trained weights and token cache.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from benchkit.core.checkpoint import (
    atomic_write,
    checkpoint_exists,
)
from benchkit.core.compat import Combination
from benchkit.core.config import RunConfig
from benchkit.core.errors import CheckpointError
from benchkit.core.identity import fingerprint
from benchkit.core.provenance import environment
from benchkit.core.registry import GENERATORS, TOKENIZERS
from benchkit.data.base import to_float
from benchkit.metrics.health import REFERENCE_IMAGES, SampleHealth, TokenReference, token_reference
from benchkit.sampling.generate import SampleSettings, generate_images
from benchkit.training.tokencache import INDEX, ShardedTokenCache
from benchkit.training.trainer import TrainResult

log = logging.getLogger(__name__)


MODEL = "model"


@dataclass
class TrainedTokenizer:
    """A trained (or loaded) tokenizer and where it lives."""

    module: Any  # an nn.Module implementing benchkit.core.interfaces.Tokenizer
    dir: Path
    fingerprint: str
    result: TrainResult | None


@dataclass
class TrainedRun:
    """A trained (or loaded) generator with its tokenizer and combination."""

    cfg: RunConfig
    generator: Any  # an nn.Module implementing benchkit.core.interfaces.Generator
    tokenizer: TrainedTokenizer
    combo: Combination
    dir: Path
    result: TrainResult | None
    _token_reference: TokenReference | None = field(default=None, init=False, repr=False, compare=False)

    def sample_images(
        self,
        labels: torch.Tensor,
        settings: SampleSettings,
        *,
        seed: int,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        distributed: bool = False,
        health: SampleHealth | None = None,
    ) -> torch.Tensor:
        """uint8 images [N, 3, H, W] of this run for ``labels`` (``benchkit.sampling.generate.generate_images``);
        ``batch_size`` defaults to the config's ``sample.batch_size``. ``health`` sees every batch of sampled tokens
        before decoding (build it with :meth:`token_reference`); the images do not depend on it."""
        return generate_images(
            self.generator,
            self.tokenizer.module,
            self.combo.kind,
            labels,
            settings,
            seed=seed,
            batch_size=self.cfg.sample.batch_size if batch_size is None else batch_size,
            progress=progress,
            distributed=distributed,
            health=health,
        )

    def token_reference(self, images: torch.Tensor | None = None) -> TokenReference | None:
        """Statistics of this run's training tokens for the sample health check, computed once per run: from up to
        ``REFERENCE_IMAGES`` rows of the tokenizer's token cache, spread evenly over it (a folder listed class by
        class is still covered), when it has one for this token kind, else by encoding as many of ``images`` (uint8
        training images, picked the same way) as the cache would; None when neither is there. Cached values go
        through ``tokens_from_cache`` with a fixed seed (a KL posterior sample, as in training), never drawing from
        the global random state."""
        if self._token_reference is None:
            tokens = self._cached_tokens()
            if tokens is None and images is not None and len(images):
                tokens = self._encoded_tokens(images[_spread(len(images))])
            if tokens is not None:
                self._token_reference = token_reference(tokens)
        return self._token_reference

    def _cached_tokens(self) -> torch.Tensor | None:
        """Training tokens from ``REFERENCE_IMAGES`` rows of the token cache, or None (no cache of this kind, another
        tokenizer's, or unreadable)."""
        tok, kind = self.tokenizer, self.combo.kind
        path = tok.dir / f"tokens-{kind}"
        shards = Path(f"{path}-shards")
        try:
            if (shards / INDEX).is_file():
                sharded = ShardedTokenCache(shards)
                if sharded.index.get("key") != f"{tok.fingerprint}-{kind}":
                    return None
                cached = sharded[_spread(len(sharded))]
            elif checkpoint_exists(path) and path.with_suffix(".safetensors").is_file():
                meta = json.loads(path.with_suffix(".json").read_text())
                if meta.get("fingerprint") != tok.fingerprint:
                    return None
                with safe_open(str(path.with_suffix(".safetensors")), framework="pt") as f:
                    part = f.get_slice("cache")
                    n = int(part.get_shape()[0])
                    cached = part[:: _step(n)]
            else:
                return None
        except (CheckpointError, SafetensorError, OSError, ValueError, KeyError) as e:
            log.warning("%s: token cache unreadable for the sample health reference (%s)", self.dir.name, e)
            return None
        return self._from_cache(cached)

    @torch.no_grad()
    def _encoded_tokens(self, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """Training tokens of uint8 ``images``, encoded as the token cache encodes them."""
        device = next(self.tokenizer.module.parameters()).device
        parts = []
        for i in range(0, len(images), batch_size):
            x = to_float(images[i : i + batch_size]).to(device)
            parts.append(self.tokenizer.module.encode_for_cache(x, self.combo.kind))
        return self._from_cache(torch.cat(parts))

    @torch.no_grad()
    def _from_cache(self, cached: torch.Tensor) -> torch.Tensor:
        module = self.tokenizer.module
        device = next(module.parameters()).device
        generator = torch.Generator(device=device).manual_seed(0)
        return module.tokens_from_cache(cached.to(device), self.combo.kind, generator).cpu()


def _step(n: int) -> int:
    """The stride that takes at most ``REFERENCE_IMAGES`` of ``n`` rows, from first to last."""
    return max(1, -(-n // REFERENCE_IMAGES))


def _spread(n: int) -> torch.Tensor:
    """Up to ``REFERENCE_IMAGES`` row numbers spread evenly over ``n`` rows."""
    return torch.arange(0, n, _step(n))


def model_meta(directory: str | Path) -> dict[str, Any]:
    """The metadata of a trained stage's final weights (``<directory>/model.json``): fingerprint, training speed and
    time, steps, imported provenance...; empty when the stage has not finished."""
    path = Path(directory) / f"{MODEL}.json"
    return dict(json.loads(path.read_text())) if path.is_file() else {}


# Bumped when code changes what stored tokenizer weights compute (2: GroupNorm groups of >= 8 channels, norm option), so
# that weights trained by older code are not loaded into a module that would read them differently.
TOKENIZER_REVISION = 2


def tokenizer_seed(cfg: RunConfig) -> int:
    """The seed the tokenizer trains with: the run's, or with ``train.tokenizer_per_seed = false`` the first
    training seed's (``seed - train.seed_index``), so that every training seed of a model shares one tokenizer."""
    return cfg.seed if cfg.train.tokenizer_per_seed else cfg.seed - cfg.train.seed_index


def base_seed_config(cfg: RunConfig) -> RunConfig:
    """The config of the first training seed of this config's model (itself when it is that seed)."""
    if cfg.train.seed_index == 0:
        return cfg
    return replace(cfg, seed=cfg.seed - cfg.train.seed_index, train=replace(cfg.train, seed_index=0))


def seed_configs(cfg: RunConfig) -> list[RunConfig]:
    """The ``train.seeds`` configs of this config's model: seed, seed + 1, ... with ``train.seed_index`` 0, 1, ...
    (each an ordinary run; the first is ``cfg`` itself when its index is 0)."""
    base = base_seed_config(cfg)
    return [
        replace(base, seed=base.seed + i, train=replace(base.train, seed_index=i)) if i else base
        for i in range(cfg.train.seeds)
    ]


def model_fingerprint(cfg: RunConfig) -> str:
    """Identity of a model config whatever its training seed: the first seed's run fingerprint (plus the shared
    tokenizer switch when it is off). The rows of every training seed of a model carry it as ``model``."""
    first = run_fingerprint(base_seed_config(cfg))
    return first if cfg.train.tokenizer_per_seed else fingerprint("model", first, "shared-tokenizer")


def tokenizer_fingerprint(cfg: RunConfig) -> str:
    """Identity of a trained tokenizer: code revision, data, tokenizer options, its training stage, seed."""
    return fingerprint(
        "tokenizer", TOKENIZER_REVISION, cfg.data, cfg.tokenizer, cfg.tokenizer_train.identity(), tokenizer_seed(cfg)
    )


def run_fingerprint(cfg: RunConfig) -> str:
    """Identity of a trained generator: its tokenizer plus generator (options with defaults filled in, so a changed
    default size is a new run), head, training (``TrainConfig.identity``: no speed switches) and seed."""
    generator = GENERATORS.make_config(cfg.generator.name, cfg.generator.options)
    return fingerprint(
        "run", tokenizer_fingerprint(cfg), cfg.generator, generator, cfg.head, cfg.train.identity(), cfg.seed
    )


def tokenizer_dir(cfg: RunConfig) -> Path:
    """Where the tokenizer of this config is (or will be) trained."""
    return Path(cfg.out_dir) / "tokenizers" / f"{cfg.tokenizer.name}-{tokenizer_fingerprint(cfg)}"


def run_dir(cfg: RunConfig) -> Path:
    """Where the generator of this config is (or will be) trained."""
    name = f"{cfg.tokenizer.name}-{cfg.generator.name}-{cfg.head.name}-{run_fingerprint(cfg)}"
    return Path(cfg.out_dir) / "runs" / name


def build_tokenizer(cfg: RunConfig, device: torch.device) -> Any:  # an nn.Module, interfaces.Tokenizer
    """An untrained tokenizer of this config; on CPU its conv weights are channels-last (NHWC), which oneDNN runs
    1.1-1.4x faster on the tiny tokenizers (benchmarks/README.md); the values agree with NCHW to float rounding."""
    module = TOKENIZERS.create(cfg.tokenizer.name, image_size=cfg.data.image_size, **cfg.tokenizer.options)
    return module.to(device, memory_format=torch.channels_last if device.type == "cpu" else torch.preserve_format)


def build_generator(
    cfg: RunConfig, combo: Combination, num_classes: int, device: torch.device
) -> Any:  # an nn.Module, interfaces.Generator
    """An untrained generator (with its head) of this config."""
    return GENERATORS.create(
        cfg.generator.name,
        spec=combo.spec,
        head=cfg.head.name,
        head_options=dict(cfg.head.options),
        num_classes=num_classes,
        **cfg.generator.options,
    ).to(device)


def write_run_files(cfg: RunConfig, rdir: Path, device: torch.device) -> None:
    """config.json and env.json beside the run's weights."""
    rdir.mkdir(parents=True, exist_ok=True)
    atomic_write(rdir / "config.json", lambda p: p.write_text(json.dumps(cfg.to_dict(), indent=1, default=str)))
    atomic_write(rdir / "env.json", lambda p: p.write_text(json.dumps(environment(device), indent=1, default=str)))
