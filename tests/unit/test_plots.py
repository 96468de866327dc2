"""Pareto front, FID-vs-steps series, training curves and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchkit.core.errors import ConfigError
from benchkit.results.plots import (
    fid_vs_steps_plot,
    pareto_figure,
    pareto_front,
    pareto_plot,
    plots_from_results,
    training_curves_plot,
)
from benchkit.results.store import append_row
from benchkit.sampling.grids import grid_tensor, reconstruction_grid, save_grid


def _speed_rows() -> pd.DataFrame:
    # (row_id, generator, head, images/s, fid): front = fast3 (fastest), mid (better fid), slow1 (best fid).
    pts = [
        ("slow1", "ar", "ce", 1.0, 10.0),
        ("slow2", "ar", "ce", 0.8, 12.0),
        ("mid", "mar", "diffloss", 10.0, 20.0),
        ("dom", "mar", "ce", 9.0, 25.0),
        ("fast3", "mar", "diffloss", 100.0, 40.0),
        ("tie_dom", "mar", "ce", 10.0, 20.5),
    ]
    rows = [
        {
            "row_id": r,
            "kind": "generator",
            "generator": g,
            "head": h,
            "images_per_s": s,
            "fid": f,
            "features": "classifier",
        }
        for r, g, h, s, f in pts
    ]
    rows.append(
        {"row_id": "nofid", "kind": "generator", "generator": "ar", "head": "ce", "images_per_s": 500.0, "fid": None}
    )
    rows.append({"row_id": "tok", "kind": "tokenizer", "tokenizer": "vq", "images_per_s": 1000.0, "fid": 1.0})
    return pd.DataFrame(rows)


def test_pareto_front_indices() -> None:
    assert pareto_front([3.0, 1.0, 2.0], [10.0, 1.0, 5.0]) == [1, 2, 0]
    assert pareto_front([1.0, 2.0], [10.0, 5.0]) == [0]  # faster and better dominates
    assert pareto_front([1.0, 1.0], [5.0, 5.0]) == [1, 0] or pareto_front([1.0, 1.0], [5.0, 5.0]) == [0, 1]
    assert pareto_front([1.0, 1.0], [5.0, 4.0]) == [0]  # same fid, slower: dominated


def test_pareto_plot(tmp_path: Path) -> None:
    path = tmp_path / "pareto.png"
    front = pareto_plot(_speed_rows(), path)
    assert front == ["slow1", "mid", "fast3"]  # tokenizer rows and rows without fid are left out
    assert path.exists() and path.stat().st_size > 1000
    assert Image.open(path).format == "PNG"
    with pytest.raises(ConfigError, match="fid and images_per_s"):
        pareto_plot(pd.DataFrame([{"row_id": "x", "fid": 3.0}]), tmp_path / "none.png")


@pytest.mark.parametrize("speeds", [(0.3, 2.0, 15.0, 40.0, 700.0, 9000.0), (28.0, 45.0, 90.0, 130.0, 480.0, 950.0)])
def test_pareto_figure_is_readable(speeds: tuple[float, ...]) -> None:
    """Tick labels never overlap, FID spanning a decade gets a log axis, and the key names every row with its
    tokenizer, generator, head and the setting that tells rows of one model apart."""
    fids = (12.0, 16.0, 45.0, 140.0, 400.0, 610.0)
    rows = [
        {
            "row_id": f"r{i}",
            "kind": "generator",
            "tokenizer": "vq" if i % 2 else "kl",
            "generator": "mar",
            "head": "ce",
            "steps": 4 * (i + 1),
            "cfg": 1.0,
            "images_per_s": s,
            "fid": f,
        }
        for i, (s, f) in enumerate(zip(speeds, fids))
    ]
    fig, _ = pareto_figure(pd.DataFrame(rows))
    ax = fig.axes[0]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text() and t.get_visible()]
        assert len(boxes) >= 2
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "1. kl+mar+ce steps=4, FID 12" in texts and "6. vq+mar+ce steps=24, FID 610" in texts
    assert [t.get_text() for t in ax.texts] == [str(n) for n in range(1, 7)]  # every point is numbered
    flat, _ = pareto_figure(pd.DataFrame(rows).assign(fid=[10.0, 11.0, 12.0, 13.0, 14.0, 15.0]))
    assert flat.axes[0].get_yscale() == "linear"


def test_fid_vs_steps_series_equal_input(tmp_path: Path) -> None:
    rows = []
    expected: dict[str, list[tuple[int, float]]] = {"mar/diffloss/kl": [], "ar/ce/vq": []}
    for steps, fid in [(4, 60.0), (8, 45.5), (16, 40.25)]:
        rows.append({"generator": "mar", "head": "diffloss", "tokenizer": "kl", "steps": steps, "fid": fid})
        expected["mar/diffloss/kl"].append((steps, fid))
    for steps, fid in [(16, 70.0), (64, 50.0)]:
        rows.append({"generator": "ar", "head": "ce", "tokenizer": "vq", "steps": steps, "fid": fid})
        expected["ar/ce/vq"].append((steps, fid))
    # A CFG sweep at one step count: the best FID is plotted.
    rows.append({"generator": "ar", "head": "ce", "tokenizer": "vq", "steps": 64, "fid": 55.0, "cfg": 2.0})
    path = tmp_path / "steps.png"
    series = fid_vs_steps_plot(pd.DataFrame(rows[::-1]), path)
    assert series == expected
    assert path.exists() and path.stat().st_size > 1000
    one_each = [
        {"generator": "mar", "head": "diffloss", "tokenizer": "kl", "steps": 16, "fid": 40.25},
        {"generator": "ar", "head": "ce", "tokenizer": "vq", "steps": 64, "fid": 50.0},
    ]
    with pytest.raises(ConfigError, match="one step count only"):
        fid_vs_steps_plot(pd.DataFrame(one_each), tmp_path / "single.png")
    assert not (tmp_path / "single.png").exists()


def test_training_curves(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("step,loss,lr\n0,2.5,0.1\n10,1.5,0.1\n20,1.0,0.1\n")
    b.write_text("step,loss\n0,3.0\n5,\n10,2.0\n")
    series = training_curves_plot({"run_a": a, "run_b": b}, tmp_path / "curves.png")
    assert series == {"run_a": [(0, 2.5), (10, 1.5), (20, 1.0)], "run_b": [(0, 3.0), (10, 2.0)]}
    assert (tmp_path / "curves.png").stat().st_size > 1000
    bad = tmp_path / "bad.csv"
    bad.write_text("iter,value\n0,1\n")
    with pytest.raises(ConfigError, match="needs columns step and loss; has iter, value"):
        training_curves_plot({"bad": bad}, tmp_path / "bad.png")


def test_plots_from_results(tmp_path: Path) -> None:
    res = tmp_path / "results"
    for i, row in enumerate(_speed_rows().to_dict("records")):
        append_row(res, {k: v for k, v in row.items() if not pd.isna(v)} | {"steps": 8 * (i + 1)})
    (res / "run1").mkdir()
    (res / "run1" / "train_log.csv").write_text("step,loss\n0,1.0\n1,0.5\n")
    out = res / "plots"
    paths = plots_from_results(res, out)
    assert [p.name for p in paths] == ["pareto.png", "fid_vs_steps.png", "training_curves.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert plots_from_results(tmp_path / "empty", tmp_path / "empty_out") == []


def test_save_grid_size(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8)
    path = save_grid(images, tmp_path / "grid.png", nrow=2)
    img = Image.open(path)
    # 2 columns x 3 rows with 2 px padding: W = 2*(6+2)+2, H = 3*(4+2)+2.
    assert img.size == (18, 20) and img.mode == "RGB"
    pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert torch.equal(pixels[:, 2:6, 2:8], images[0])  # the first tile is stored exactly
    assert tuple(grid_tensor(images[:1], nrow=4).shape) == (3, 8, 10)  # one image keeps its border
    floats = torch.zeros(2, 3, 4, 4)  # float images in [-1, 1] are accepted
    assert grid_tensor(floats, nrow=2)[:, 2, 2].tolist() == [128, 128, 128]
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        save_grid(torch.zeros(3, 4, 4, dtype=torch.uint8), tmp_path / "x.png", nrow=2)


def test_reconstruction_grid_alternates_rows(tmp_path: Path) -> None:
    n, h, w = 5, 4, 4
    originals = torch.full((n, 3, h, w), 10, dtype=torch.uint8)
    recons = torch.full((n, 3, h, w), 200, dtype=torch.uint8)
    path = reconstruction_grid(originals, recons, tmp_path / "recon.png", nrow=3)
    img = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    # ceil(5/3) = 2 row pairs -> 4 rows of 3 tiles.
    assert tuple(img.shape) == (3, 4 * (h + 2) + 2, 3 * (w + 2) + 2)
    tile = lambda r, c: img[:, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w]
    assert int(tile(0, 0).float().mean()) == 10 and int(tile(1, 0).float().mean()) == 200
    assert int(tile(2, 1).float().mean()) == 10 and int(tile(3, 1).float().mean()) == 200
    assert int(tile(2, 2).float().mean()) == 255  # blank fill for the short last row
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_grid(originals, recons[:2], tmp_path / "bad.png")


def test_pareto_key_names_the_cfg_and_temperature_of_a_single_tuned_row() -> None:
    import pandas as pd

    from benchkit.results.plots import _point_names

    rows = pd.DataFrame(
        {
            "tokenizer": ["vq", "kl", "rq"],
            "generator": ["ar", "ar", "ar"],
            "head": ["ce", "diffloss", "ce"],
            "cfg": [3.0, 1.0, 1.0],
            "cfg_schedule": ["linear", "constant", "constant"],
            "temperature": [1.0, 1.0, 0.8],
            "_fid": [169.1, 1093.0, 99.0],
        }
    )
    assert _point_names(rows) == [
        "vq+ar+ce cfg=3.0 cfg_schedule=linear, FID 169",
        "kl+ar+diffloss, FID 1.09e+03",
        "rq+ar+ce temperature=0.8, FID 99",
    ]


def test_pareto_points_carry_their_training_seed_intervals(tmp_path: Path) -> None:
    rows = _speed_rows()
    rows = rows.assign(fid_ci95=[2.0 if i % 2 else float("nan") for i in range(len(rows))])
    fig, _ = pareto_figure(rows)
    bars = [c for c in fig.axes[0].containers if c.__class__.__name__ == "ErrorbarContainer"]
    usable = rows[(rows.get("kind") != "tokenizer") & rows["fid"].notna() & rows["images_per_s"].notna()]
    assert len(bars) == int(usable["fid_ci95"].notna().sum()) > 0  # one bar per row that has an interval
    segments = bars[0].lines[2][0].get_segments()[0]
    assert abs(segments[1][1] - segments[0][1]) == pytest.approx(4.0)  # mean +- 2.0
