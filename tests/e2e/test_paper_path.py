"""A scaled-down copy of the ImageNet path: an ImageNet-layout folder read lazily, sharded token caches of each
image and its mirror, bf16 training of a small MAR + Diffusion Loss, FID streamed against reference statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from benchkit.core.config import resolve
from benchkit.data.base import ImageData
from benchkit.data.lazy import LazyImages
from benchkit.metrics.features import load_extractor
from benchkit.metrics.refstats import save_reference_stats, streamed_fid
from benchkit.sampling.generate import SampleSettings, balanced_labels, generate_images
from benchkit.training.tokencache import ShardedTokenCache

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from test_lazy_data import make_folder  # noqa: E402

pytestmark = pytest.mark.slow


def test_lazy_sharded_bf16_mar_with_reference_stats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchkit.training.checks as checks
    from benchkit.training.checks import load_splits
    from benchkit.training.generator import train_generator

    # the lazy path asks for Inception features, whose weights are not on this machine: the small dataset network
    # stands in for them here (it needs the training images in memory, which this small folder allows)
    monkeypatch.setattr(checks, "check_eval", lambda cfg: None)
    root = make_folder(tmp_path / "imagenet", classes=4, per_class=16, size=(48, 40))
    cfg = resolve(
        "tiny",
        overrides=[
            f'data.name="imagefolder:{root}"',
            "data.image_size=16",
            "data.options.lazy=true",
            "data.options.test_fraction=0.25",
            'tokenizer.name="kl"',
            'generator.name="mar"',
            'head.name="diffloss"',
            "tokenizer_train.steps=4",
            "tokenizer_train.batch_size=16",
            "train.steps=6",
            "train.batch_size=16",
            "train.hflip=true",
            'train.precision="bf16"',
            'sample.precision="bf16"',
            f'out_dir="{tmp_path / "out"}"',
            "generator.options.width=32",
            "head.options.width=32",
        ],
    )
    run = train_generator(cfg, progress=False)
    train, test = load_splits(cfg)
    assert isinstance(train.images, LazyImages) and len(train) == 48
    shards = sorted(p.name for p in run.tokenizer.dir.glob("tokens-*-shards"))
    assert shards == ["tokens-continuous-hflip-shards", "tokens-continuous-shards"]
    assert len(ShardedTokenCache(run.tokenizer.dir / "tokens-continuous-shards")) == 48
    log = (run.dir / "log.csv").read_text().splitlines()
    assert len(log) > 1 and run.result is not None and torch.isfinite(torch.tensor(run.result.final_loss))
    eager = ImageData(train.name, "train", train.images[:], train.labels, train.class_names)
    ext = load_extractor(
        "dataset",
        train_data=eager,
        cache_dir=tmp_path / "features",
        device=torch.device("cpu"),
        options={"width": 8, "steps": 20, "batch_size": 16},
    )
    stats = save_reference_stats(test.images[:], ext, tmp_path / "ref.npz")
    s = SampleSettings(steps=4, cfg=2.0, diffusion_steps=5)
    fid = streamed_fid(
        lambda lab, seed: generate_images(
            run.generator, run.tokenizer.module, run.combo.kind, lab, s, seed=seed, batch_size=8
        ),
        balanced_labels(24, 4),
        ext,
        stats,
        chunk=8,
        seed=0,
    )
    assert fid["n_samples"] == 24 and fid["fid"] > 0
    # every training image is the same ramp, so the edge block is scaled by its floor (not by 1/1e-6): the statistics
    # stay sane, and on sane statistics the two libraries give one number on any CPU
    assert "fid_invalid" not in fid and 0 < fid["fid"] < 1e6
    assert fid["fid_cleanfid"] == pytest.approx(fid["fid"], rel=1e-6)
