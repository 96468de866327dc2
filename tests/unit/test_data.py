"""Datasets: shapes generation, torchvision formats from real (tiny) files, imagefolder decoding and errors."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchkit.core.errors import ConfigError, DataError, UnknownComponentError
from benchkit.core.registry import DATASETS
from benchkit.data.base import ImageData
from benchkit.data.loading import load_dataset
from benchkit.data.shapes import CLASS_NAMES, SPLITS, ShapesConfig, generate_shapes

# ------------------------------------------------------------------------------------------------------ shapes


def _shapes(split: str = "train", **options: int) -> ImageData:
    sizes = {"num_train": 200, "num_test": 100} | options
    return load_dataset("shapes", split=split, **sizes)  # type: ignore[arg-type]


def test_registry_lists_all_builtins_with_a_summary() -> None:
    assert set(DATASETS.names()) >= {"shapes", "mnist", "fashion-mnist", "cifar10", "imagefolder"}
    for name in DATASETS.names():
        assert DATASETS.describe(name)["summary"], name


def test_shapes_defaults_without_generating() -> None:
    cfg = ShapesConfig()
    assert (cfg.num_train, cfg.num_test) == (20_000, 5_000)
    with pytest.raises(ConfigError, match="num_train must be >= 1"):
        load_dataset("shapes", split="train", num_train=0)


def test_shapes_same_seed_same_bytes_other_seed_differs() -> None:
    a, b = _shapes(seed=3), _shapes(seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = _shapes(seed=4)
    assert not torch.equal(a.images, c.images)


def test_shapes_sizes_dtypes_ranges_and_balance() -> None:
    train, test = _shapes("train", num_train=230), _shapes("test", num_test=70)
    assert train.images.shape == (230, 3, 32, 32) and test.images.shape == (70, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert (train.split, test.split, train.name) == ("train", "test", "shapes")
    assert train.class_names == CLASS_NAMES and train.num_classes == 10
    assert train.images.max() > 200 and train.images.min() < 50  # the full 8-bit range is used
    counts = torch.bincount(train.labels, minlength=10)
    assert counts.tolist() == [23] * 10  # all ten classes, balanced
    assert set(torch.bincount(test.labels, minlength=10).tolist()) == {7}
    assert not torch.equal(train.labels[:20], train.labels[:20].sort().values)  # shuffled, not grouped by class
    assert _shapes(image_size=20).images.shape == (200, 3, 20, 20)


def test_shapes_train_and_test_are_disjoint() -> None:
    train, test = _shapes("train", num_train=300), _shapes("test", num_test=300)
    train_bytes = {img.numpy().tobytes() for img in train.images}
    assert len(train_bytes) == 300  # no duplicates within a split either
    assert not train_bytes & {img.numpy().tobytes() for img in test.images}
    # train of seed s and test of seed s' never share a random stream (seeds 2s and 2s'+1)
    assert not torch.equal(_shapes("test", seed=0).images[:50], _shapes("train", seed=1).images[:50])


def test_shapes_vary_within_classes_and_differ_between_classes() -> None:
    data = _shapes(num_train=1000)
    x = data.images.float()
    for k in range(10):
        assert x[data.labels == k].std() > 40, CLASS_NAMES[k]  # colours, placement and backgrounds vary
    assert (x.flatten(1).std(1) > 3).all()  # every image shows its shape against the background
    assert x[:, :, 0, 0].std(0).min() > 40  # background colours vary continuously

    # Classes differ in structure, not just colour: a nearest-centroid classifier on colour- and
    # translation-invariant features (log |FFT| of standardized grayscale) is far above chance (0.1).
    def features(images: torch.Tensor) -> torch.Tensor:
        g = images.float().mean(1)
        g = (g - g.mean((1, 2), keepdim=True)) / (g.std((1, 2), keepdim=True) + 1e-3)
        return torch.fft.rfft2(g).abs().log1p().flatten(1)

    held_out = _shapes("test", num_test=500)
    f_train, f_test = features(data.images), features(held_out.images)
    centroids = torch.stack([f_train[data.labels == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(f_test, centroids).argmin(1) == held_out.labels).float().mean()
    assert accuracy > 0.4, accuracy


def test_shapes_are_resolution_independent() -> None:
    small, _ = generate_shapes(60, seed=5, image_size=32)
    large, _ = generate_shapes(60, seed=5, image_size=64)
    pooled = torch.nn.functional.avg_pool2d(large.float(), 2)
    assert (pooled - small.float()).abs().mean() < 1.5  # same scenes, rendered at twice the resolution


# ------------------------------------------------------------------------------------------------------ errors


def test_unknown_name_suggests_and_bad_split_lists_choices() -> None:
    with pytest.raises(UnknownComponentError, match=r"did you mean 'shapes'\?") as err:
        load_dataset("shapez", split="train")
    assert "cifar10" in str(err.value) and "imagefolder" in str(err.value)
    with pytest.raises(ConfigError, match="unknown split 'val'; valid: train, test"):
        load_dataset("shapes", split="val")  # type: ignore[arg-type]
    assert SPLITS == ("train", "test")
    with pytest.raises(ConfigError, match="did you mean 'num_train'"):
        load_dataset("shapes", split="train", num_trian=5)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("shapes", split="train", image_size=0)


def test_name_with_path_parsing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="imagefolder:PATH"):
        load_dataset("imagefolder", split="train")
    with pytest.raises(ConfigError, match="empty path"):
        load_dataset("imagefolder:", split="train")
    with pytest.raises(ConfigError, match="'mnist' takes no path.*imagefolder"):
        load_dataset("mnist:/data", split="train")
    with pytest.raises(UnknownComponentError, match="did you mean 'imagefolder'"):
        load_dataset("imagefoldr:/data", split="train")
    with pytest.raises(DataError, match=f"image folder {tmp_path / 'no:such'} does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'no:such'}", split="train")  # only the first colon separates


# ------------------------------------------------------------------------------------------ torchvision formats


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: magic 0x0000 08 <ndim> (uint8 data), big-endian int32 dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for prefix, n in (("train", 12), ("t10k", 8)):
        images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        _write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        out["train" if prefix == "train" else "test"] = (images, labels)
    return out


@pytest.mark.parametrize(
    ("name", "folder", "first_class"),
    [("mnist", "MNIST", "0 - zero"), ("fashion-mnist", "FashionMNIST", "T-shirt/top")],
)
def test_mnist_formats_load_from_real_idx_files(tmp_path: Path, name: str, folder: str, first_class: str) -> None:
    written = _write_mnist(tmp_path, folder, np.random.default_rng(0))
    for split in SPLITS:
        data = load_dataset(name, split=split, root=str(tmp_path))  # type: ignore[arg-type]
        images, labels = written[split]
        assert data.images.shape == (len(images), 3, 32, 32) and data.images.dtype == torch.uint8
        assert data.labels.tolist() == labels.tolist() and data.labels.dtype == torch.int64
        assert data.class_names[0] == first_class and data.num_classes == 10
        # 2-pixel black border, exact digits inside, the same in all three channels
        digits = torch.from_numpy(images).to(torch.uint8)[:, None].expand(-1, 3, -1, -1)
        assert torch.equal(data.images[:, :, 2:30, 2:30], digits)
        assert data.images[:, :, :2].max() == 0 and data.images[:, :, :, 30:].max() == 0
    assert load_dataset(name, split="test", root=str(tmp_path / folder)).images.shape[0] == 8  # root = dataset folder
    assert load_dataset(name, split="test", root=str(tmp_path), image_size=16).images.shape == (8, 3, 16, 16)


def test_cifar10_loads_from_real_pickle_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {}
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = rng.integers(0, 256, (3, 3072), dtype=np.uint8), rng.integers(0, 10, 3).tolist()
        with open(folder / batch, "wb") as f:
            pickle.dump({"batch_label": batch, "data": data, "labels": labels}, f, protocol=2)
        batches[batch] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 3, "num_vis": 3072}, f, protocol=2)

    train = load_dataset("cifar10", split="train", root=str(tmp_path))
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert train.images.shape == (15, 3, 32, 32) and torch.equal(train.images, torch.from_numpy(expected))
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.class_names == tuple(names)
    test = load_dataset("cifar10", split="test", root=str(folder), image_size=64)  # root = dataset folder
    assert test.images.shape == (3, 3, 64, 64) and test.labels.tolist() == batches["test_batch"][1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("mnist", "MNIST/raw/"), ("fashion-mnist", "FashionMNIST/raw/"), ("cifar10", "cifar-10-batches-py/")],
)
def test_missing_files_error_offline_names_data_root(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(name, split="train", root=str(tmp_path))
    message = str(err.value)
    assert "--data-root" in message and expected in message and "download=true" in message and "\n" not in message


def test_corrupt_idx_file_is_a_data_error(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "MNIST", np.random.default_rng(0))
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03garbage")
    with pytest.raises(DataError, match="cannot read mnist"):
        load_dataset("mnist", split="train", root=str(tmp_path))


# ------------------------------------------------------------------------------------------------ imagefolder


def _save(path: Path, image: Image.Image, **kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


def _pixels_by_class(data: ImageData) -> dict[str, torch.Tensor]:
    return {data.class_names[int(y)]: img for img, y in zip(data.images, data.labels)}


def test_imagefolder_converts_every_mode_to_rgb(tmp_path: Path) -> None:
    palette = [0, 0, 0, 0, 255, 0, 10, 200, 30] + [0] * 759
    p_image = Image.new("P", (40, 40), 1)
    p_image.putpalette(palette)
    _save(tmp_path / "rgba_clear" / "a.png", Image.new("RGBA", (40, 40), (255, 0, 0, 0)))
    _save(tmp_path / "rgba_half" / "a.png", Image.new("RGBA", (40, 40), (0, 0, 255, 128)))
    _save(tmp_path / "la" / "a.png", Image.new("LA", (40, 40), (0, 0)))
    _save(tmp_path / "p_transparent" / "a.png", p_image, transparency=1)
    _save(tmp_path / "p_opaque" / "a.gif", p_image.copy())
    _save(tmp_path / "l" / "a.bmp", Image.new("L", (40, 40), 77))
    _save(tmp_path / "cmyk" / "a.jpg", Image.new("CMYK", (40, 40), (0, 255, 0, 0)), quality=95)
    _save(tmp_path / "i16" / "a.png", Image.new("I;16", (40, 40), 65535))
    odd = Image.new("RGB", (50, 37), (200, 100, 50))
    odd.paste((0, 255, 0), (0, 0, 3, 37))  # a left strip that the centre crop removes
    _save(tmp_path / "odd" / "a.png", odd)
    (tmp_path / "odd" / "notes.txt").write_text("not an image, ignored")

    data = load_dataset(f"imagefolder:{tmp_path}", split="train", image_size=32)
    assert data.class_names == tuple(sorted(p.name for p in tmp_path.iterdir()))
    assert data.images.shape == (9, 3, 32, 32) and data.images.dtype == torch.uint8
    expected = {
        "rgba_clear": (255, 255, 255),  # fully transparent over the white background
        "rgba_half": (127, 127, 255),
        "la": (255, 255, 255),
        "p_transparent": (255, 255, 255),
        "p_opaque": (0, 255, 0),
        "l": (77, 77, 77),
        "cmyk": (255, 0, 255),
        "i16": (255, 255, 255),
        "odd": (200, 100, 50),
    }
    pixels = _pixels_by_class(data)
    for name, rgb in expected.items():
        diff = (pixels[name].int() - torch.tensor(rgb).view(3, 1, 1)).abs().max()
        assert diff <= 3, (name, pixels[name][:, 16, 16].tolist())
    grey = load_dataset(f"imagefolder:{tmp_path}", split="train", background=(128, 128, 128), image_size=8)
    assert _pixels_by_class(grey)["la"].unique().tolist() == [128] and grey.images.shape[-1] == 8


def test_imagefolder_skips_corrupt_files_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        _save(tmp_path / "cat" / f"{i}.png", Image.new("RGB", (20, 20), (i, 0, 0)))
        _save(tmp_path / "dog" / f"{i}.png", Image.new("RGB", (20, 20), (0, i, 0)))
    (tmp_path / "cat" / "garbage.png").write_bytes(b"this is not a png")
    good = (tmp_path / "dog" / "0.png").read_bytes()
    (tmp_path / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="benchkit.data.imagefolder"):
        data = load_dataset(f"imagefolder:{tmp_path}", split="train", test_fraction=0.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 unreadable image file(s) of 8" in warnings[0].getMessage()
    assert len(data) == 6 and data.class_names == ("cat", "dog")


def test_imagefolder_split_is_deterministic_disjoint_and_stratified(tmp_path: Path) -> None:
    for c, name in enumerate(["b", "a"]):
        for i in range(10):
            _save(tmp_path / name / f"{i}.png", Image.new("RGB", (8, 8), (c * 100, i * 20, 0)))

    def colours(split: str, seed: int = 0) -> list[tuple[int, ...]]:
        options = {"image_size": 8, "test_fraction": 0.3, "seed": seed}
        data = load_dataset(f"imagefolder:{tmp_path}", split=split, **options)  # type: ignore[arg-type]
        assert data.class_names == ("a", "b")
        return [tuple(img[:, 0, 0].tolist()) for img in data.images]

    train, test = colours("train"), colours("test")
    assert len(train) == 14 and len(test) == 6  # 3 of each class's 10 go to test
    assert not set(train) & set(test) and len(set(train) | set(test)) == 20
    assert colours("train") == train  # same seed, same split and order
    assert set(colours("test", seed=1)) != set(test)


def test_imagefolder_uses_train_and_val_subfolders(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("val", 2)):
        for name in ("x", "y"):
            for i in range(n):
                _save(tmp_path / split / name / f"{i}.png", Image.new("RGB", (8, 8), (10, 20, 30)))
    train = load_dataset(f"imagefolder:{tmp_path}", split="train", image_size=8)
    test = load_dataset(f"imagefolder:{tmp_path}", split="test", image_size=8)
    assert (len(train), len(test)) == (8, 4) and train.class_names == test.class_names == ("x", "y")
    assert torch.bincount(test.labels).tolist() == [2, 2]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}", split="train")
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset(f"imagefolder:{tmp_path}", split="train")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files in the class folders"):
        load_dataset(f"imagefolder:{tmp_path}", split="train")
    for i in range(3):
        (tmp_path / "cls" / f"{i}.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    with pytest.raises(DataError, match="none of the 3 image files"):
        load_dataset(f"imagefolder:{tmp_path}", split="train", test_fraction=0.0)
    with pytest.raises(DataError, match="test split .* has no images"):
        load_dataset(f"imagefolder:{tmp_path}", split="test", test_fraction=0.0)
    with pytest.raises(ConfigError, match="test_fraction must be in"):
        load_dataset(f"imagefolder:{tmp_path}", split="train", test_fraction=1.0)
