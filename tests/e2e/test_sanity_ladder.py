"""`benchkit eval --sanity`: the default offline features pass the distortion battery on two datasets.

On ``shapes`` (the embedded default) and on a generated image folder whose classes are defined by colour, every
distortion at its strongest level costs at least 10x the baseline FID, FID grows with strength, and faint noise and
blur cost less than dropping half the classes, a grey image or (on the colour folder) swapped channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from colour_folder import write_colour_folder
from conftest import bk

pytestmark = pytest.mark.slow

N = 2000  # images per side (sanity.MIN_N): the baseline's sample-size bias shrinks as 1/N


def _sanity(tmp_path: Path, *sets: str) -> dict:
    out = tmp_path / "out"
    p = bk("eval", "--sanity", "--out-dir", str(out), *sets, timeout=900)  # eval.num_samples 1000: raised to N
    assert "FID battery" in p.stdout and "requirements:" in p.stdout
    [path] = (out / "sanity").glob("*.json")
    record = json.loads(path.read_text())
    assert record["n"] == N and record["features"].startswith("dataset-fused@")
    failed = [c for c in record["checks"] if not c["passed"]]
    assert not failed and record["passed"] is True, failed
    return record


def _fid(record: dict, name: str, strength: float) -> float:
    [row] = [r for r in record["rows"] if r["distortion"] == name and abs(r["strength"] - strength) < 1e-9]
    return row["fid"]


def test_battery_passes_on_shapes(tmp_path: Path) -> None:
    record = _sanity(tmp_path, "--set", "data.options={num_train = 6000, num_test = 2000}")
    assert record["dataset"] == "shapes" and len(record["checks"]) == 24  # channel permutation: a symmetry
    # Hues are uniform in shapes, so swapping channels leaves the distribution as it was: FID stays near baseline.
    assert _fid(record, "channel permutation", 1.0) < 3 * record["baseline"]
    assert _fid(record, "desaturation", 1.0) > 10 * record["baseline"]


def test_battery_passes_on_colour_folder(tmp_path: Path) -> None:
    folder = write_colour_folder(tmp_path / "colours", per_class=1000)
    record = _sanity(tmp_path, "--set", f'data.name="imagefolder:{folder}"')
    assert record["dataset"].startswith("imagefolder:") and len(record["checks"]) == 28
    assert _fid(record, "channel permutation", 1.0) > 10 * record["baseline"]
