"""Any class count works end to end: train -> eval -> table on image folders with 3 and 12 classes, and a
dataset plugin with a single class (nothing may assume the 10 classes of the default dataset)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, bk, build_feature_cache, last_line
from PIL import Image

pytestmark = pytest.mark.slow


def _tiny_args(data: str, per_class_test: int) -> list[str]:
    """TINY without its dataset options, 8 training steps per stage, an evaluation sized for a small test split."""
    args: list[str] = []
    for i in range(0, len(TINY), 2):
        key = TINY[i + 1].split("=")[0]
        if key.startswith(("data.", "eval.num_", "tokenizer_train.steps", "train.steps")):
            continue
        args += TINY[i : i + 2]
    return [
        *args,
        "--set",
        f'data.name="{data}"',
        "--set",
        "data.options={}",
        "--set",
        "tokenizer_train.steps=8",
        "--set",
        "train.steps=8",
        "--set",
        f"eval.num_samples={max(8, 2 * per_class_test)}",
        "--set",
        f"eval.num_reference={per_class_test}",
    ]


def make_folder(root: Path, classes: int, per_class: int) -> Path:
    """``classes`` folders of small PNGs: class k is a square of its own colour at a random place."""
    rng = np.random.default_rng(classes)
    for k in range(classes):
        d = root / f"class_{k:02d}"
        d.mkdir(parents=True)
        colour = np.array([(37 * k) % 256, (91 * k + 40) % 256, (151 * k + 80) % 256], dtype=np.uint8)
        for i in range(per_class):
            img = np.full((24, 24, 3), 255, dtype=np.uint8)
            y, x = rng.integers(0, 12, size=2)
            img[y : y + 12, x : x + 12] = colour
            Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("classes", [3, 12])
def test_train_eval_table_on_image_folders(tmp_path: Path, classes: int) -> None:
    folder = make_folder(tmp_path / "images", classes, per_class=10)
    out = tmp_path / "out"
    args = _tiny_args(f"imagefolder:{folder}", per_class_test=2 * classes)
    build_feature_cache(out / "_cache", args[1::2], steps=10)
    run = Path(last_line(bk("train", "--out-dir", str(out), "--no-progress", *args)))
    assert json.loads((run / "model.json").read_text())["num_classes"] == classes

    rows = json.loads(bk("eval", str(run), "--json", "--no-progress").stdout)
    assert len(rows) == 1 and rows[0]["fid"] is not None and rows[0]["images_per_s"] > 0

    grid = tmp_path / "grid.png"
    bk("sample", str(run), "--per-class", "2", "--out", str(grid))
    assert Image.open(grid).size[1] > classes * 24  # one row of 32 px tiles per class

    bk("table", str(out / "tiny"))
    table = list(csv.DictReader(open(out / "tiny" / "table.csv")))
    assert [float(r["fid"]) for r in table if r["generator"] == "ar"] == pytest.approx([rows[0]["fid"]], abs=0.006)


def test_one_class_dataset_plugin(tmp_path: Path) -> None:
    """A registered dataset with one class trains, evaluates and samples (labels are all 0, the null class is 1)."""
    from benchkit.core.config import resolve
    from benchkit.core.registry import DATASETS
    from benchkit.data.base import ImageData
    from benchkit.evaluation.evaluate import evaluate_run
    from benchkit.training.checks import load_splits
    from benchkit.training.generator import train_generator

    @DATASETS.register("one-class-test")
    def one_class(*, split: str, root: str | None = None, image_size: int = 32) -> ImageData:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 64 if split == "train" else 16
        images = (torch.rand(n, 3, 1, 1, generator=g) * 255).to(torch.uint8).expand(n, 3, image_size, image_size)
        return ImageData("one-class-test", split, images.contiguous(), torch.zeros(n, dtype=torch.long), ("only",))

    try:
        args = _tiny_args("one-class-test", per_class_test=16)
        overrides = [a for a in args[1::2] if not a.startswith("data.options")] + [f'out_dir="{tmp_path}"']
        cfg = resolve("tiny", None, overrides)
        build_feature_cache(tmp_path / "_cache", [a for a in args[1::2] if a.startswith("data.name")], steps=5)
        train, test = load_splits(cfg)
        assert train.num_classes == 1
        run = train_generator(cfg, progress=False, splits=(train, test))
        assert run.generator.num_classes == 1
        rows = evaluate_run(run, train, test, tmp_path / "results")
        assert len(rows) == 1 and np.isfinite(rows[0]["fid"])
        assert rows[0]["class_acc"] == pytest.approx(1.0)
    finally:
        DATASETS._entries.pop("one-class-test", None)
