"""Lazy image folders through a DataLoader and the sharded, resumable, memory-mapped token cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchkit.core.errors import CheckpointError
from benchkit.data.imagefolder import ImageFolderConfig, imagefolder
from benchkit.data.lazy import LazyImageFolder, adm_center_crop, image_loader
from benchkit.training.tokencache import ShardedTokenCache, build_token_cache


def make_folder(root: Path, classes: int = 3, per_class: int = 8, size: tuple[int, int] = (40, 30)) -> Path:
    """ImageNet layout: a left-to-right ramp whose colour encodes the class and the image's index."""
    for c in range(classes):
        (root / f"n{c:08d}").mkdir(parents=True)
        for i in range(per_class):
            ramp = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :, None].repeat(size[1], 0)
            rgb = np.concatenate([ramp, np.full_like(ramp, 40 * c), np.full_like(ramp, (10 * i) % 256)], axis=2)
            Image.fromarray(rgb).save(root / f"n{c:08d}" / f"img{i}.png")
    return root


def test_lazy_folder_lists_like_the_in_memory_loader_and_crops_like_adm(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    lazy = LazyImageFolder(root, image_size=16, test_fraction=0.25)
    eager = imagefolder(ImageFolderConfig(path=str(root), test_fraction=0.25), split="train", image_size=16)
    assert len(lazy) == len(eager) == 18 and torch.equal(lazy.labels, eager.labels)
    x, y = lazy[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 16) and int(y) == int(eager.labels[0])
    assert x[0, :, 0].float().mean() < x[0, :, -1].float().mean()  # the ramp still rises to the right
    assert torch.equal(lazy.load(0, mirrored=True), x.flip(-1))
    # ADM: 40x30 (short side 30 < 32: no halving) -> bicubic to 21x16 -> centre 16x16
    img = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    assert adm_center_crop(img, 16).size == (16, 16)
    big = Image.new("RGB", (300, 200), (10, 200, 30))
    assert np.all(np.asarray(adm_center_crop(big, 64)) == (10, 200, 30))  # 300x200 -> 150x100 -> 96x64 -> crop


def test_loader_with_workers_and_random_flips(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    data = LazyImageFolder(root, image_size=16, flip=True)
    batches = list(image_loader(data, batch_size=8, workers=2, seed=0))
    images = torch.cat([b[0] for b in batches])
    assert images.shape == (24, 3, 16, 16) and torch.equal(torch.cat([b[1] for b in batches]), data.labels)
    plain = torch.stack([data.load(i) for i in range(len(data))])
    flipped = (images != plain).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < 24 and torch.equal(images[flipped], plain[flipped].flip(-1))


class Killed(Exception):
    pass


def test_token_cache_resumes_after_a_kill_and_reads_memory_mapped(tmp_path: Path) -> None:
    data = LazyImageFolder(make_folder(tmp_path / "data"), image_size=16)
    calls: list[int] = []
    kill_at = [5]

    def encode(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if len(calls) == kill_at[0]:
            raise Killed  # killed while encoding the third shard
        return x.float().mean((2, 3))

    with pytest.raises(Killed):
        build_token_cache(
            data, encode, tmp_path / "cache", key="k", shard_size=4, batch_size=2, workers=0, progress=False
        )
    assert sorted(p.name for p in (tmp_path / "cache").glob("shard-*")) == ["shard-00000.npy", "shard-00001.npy"]
    with pytest.raises(CheckpointError, match="unfinished \\(4 shards missing, first shard-00002.npy\\)"):
        ShardedTokenCache(tmp_path / "cache")
    calls.clear()
    kill_at[0] = -1
    cache = build_token_cache(
        data, encode, tmp_path / "cache", key="k", shard_size=4, batch_size=2, workers=0, progress=False
    )
    assert len(calls) == 8  # only the 4 missing shards of 2 batches each
    expected = torch.stack([data.load(i).float().mean((1, 2)) for i in range(len(data))])
    idx = torch.tensor([23, 0, 5, 5, 12])
    assert len(cache) == 24 and torch.equal(cache[idx], expected[idx])
    assert isinstance(cache.shards[0], np.memmap)
    with pytest.raises(CheckpointError, match="was built for"):
        build_token_cache(data, encode, tmp_path / "cache", key="other", shard_size=4, batch_size=2, workers=0)
    mirror = build_token_cache(
        data,
        lambda x: x[:, :, 0, :2].float(),
        tmp_path / "mirror",
        key="k",
        shard_size=8,
        batch_size=4,
        workers=0,
        mirrored=True,
        progress=False,
    )
    assert torch.equal(mirror[torch.tensor([3])][0], data.load(3).flip(-1)[:, 0, :2].float())


def test_lazy_imagefolder_in_the_pipeline(tmp_path: Path) -> None:
    from benchkit.core.config import resolve
    from benchkit.core.errors import ConfigError
    from benchkit.data.lazy import LazyImages
    from benchkit.training.checks import check_eval, load_splits

    root = make_folder(tmp_path / "data")
    sets = [
        f'data.name="imagefolder:{root}"',
        "data.image_size=16",
        "data.options.lazy=true",
        "data.options.test_fraction=0.25",
    ]
    train, test = load_splits(resolve("tiny", overrides=sets))
    assert isinstance(train.images, LazyImages) and len(train) == 18 and len(test) == 6
    batch = train.images[torch.tensor([3, 1])]
    assert batch.shape == (2, 3, 16, 16) and torch.equal(batch[1], train.images.folder.load(1))
    assert train.subset(4).images.shape == (4, 3, 16, 16) and isinstance(train.subset(4).images, torch.Tensor)
    with pytest.raises(ConfigError, match='lazy = true needs eval.features = "inception"'):
        check_eval(resolve("tiny", overrides=sets))


def test_shard_writer_renames_only_full_shards(tmp_path: Path) -> None:
    import numpy as np

    from benchkit.training.tokencache import _ShardWriter

    writer = _ShardWriter(tmp_path, n=10, shard_size=4)  # shards of 4, 4 and 2 rows
    for first in (0, 2, 4):
        writer.write(first, np.full((2, 3), first, dtype=np.float32))
    assert sorted(p.name for p in tmp_path.glob("shard-*.npy")) == ["shard-00000.npy"]  # shard 1 half written
    writer.abandon()  # as after an error: the half-written shard leaves no file behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "shard-00000.npy")[:, 0], [0, 0, 2, 2])
    writer.write(8, np.ones((2, 3), dtype=np.float32))  # the last, shorter shard closes when full
    assert (tmp_path / "shard-00002.npy").is_file() and np.load(tmp_path / "shard-00002.npy").shape == (2, 3)
