"""The distortion battery on the ``inception`` features, from a weights file in torch-fidelity's format.

The real Inception-V3 weights are not on this machine (and benchkit never downloads), so a randomly initialised
torch-fidelity Inception-V3 is saved in the format torch-fidelity loads (``tests/random_inception.py``). Its FIDs mean
nothing; what is checked is the path: the file is found through ``eval.inception_weights``, images are resized to
299 px by the extractor, the battery gives its rows with finite FIDs, and the rows' ``features`` tag names Inception
with the weights' hash. Every image costs ~0.1-0.5 s on a CPU, so N is the battery's floor (20 per side) and the
battery is cut to two distortions (the other rows run the same code on other functions of ``distortions``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from unittest import mock

import pytest
from random_inception import write_random_inception

from benchkit.core.files import file_sha256
from benchkit.metrics import battery as B
from benchkit.metrics.features import INCEPTION_ENV, INCEPTION_FILE

pytestmark = pytest.mark.slow
N = 20  # the battery's floor: every image is resized to 299 px for Inception
DATA = "data.options={num_train = 200, num_test = 20}"  # mode drop draws its N images from 200


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_inception(tmp_path_factory.mktemp("inception") / INCEPTION_FILE)


def test_cli_sanity_on_inception_weights(
    weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache: only the option can find it
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    out = tmp_path / "out"
    args = [
        "eval",
        "--sanity",
        "--out-dir",
        str(out),
        "--no-progress",
        "--set",
        DATA,
        "--set",
        "eval.features=inception",
        "--set",
        f"eval.inception_weights={weights}",
    ]  # as in docs/features.md
    kept = {name: B.DISTORTIONS[name] for name in ("desaturation", "mode drop")}  # 5 of the 25 rows, to stay fast
    with mock.patch.dict(B.DISTORTIONS, kept, clear=True):
        code, stdout, stderr = run_cli(args)
    [path] = (out / "sanity").glob("*.json")
    record = json.loads(path.read_text())
    # Not the standard file, so the tag carries the weights' hash.
    assert re.fullmatch(r"inception-v3@[0-9a-f]{8}", record["features"])
    assert record["features"] == f"inception-v3@{file_sha256(weights)[:8]}"
    assert record["n"] == N and record["dataset"] == "shapes"
    rows = record["rows"]
    assert [(r["distortion"], r["strength"]) for r in rows] == [
        ("baseline", 0.0),
        ("desaturation", 0.5),
        ("desaturation", 1.0),
        ("mode drop", 0.3),
        ("mode drop", 0.5),
    ]
    assert all(math.isfinite(r["fid"]) and r["fid"] > 0 for r in rows)
    assert all(r["ratio"] == pytest.approx(r["fid"] / record["baseline"]) for r in rows)
    assert len({r["fid"] for r in rows}) == len(rows)  # every distortion moved the features
    assert [c["requirement"] for c in record["checks"]] == [
        "desaturation 1 >= 10x baseline",
        "desaturation grows with strength",
        "mode drop 0.5 >= 10x baseline",
        "mode drop grows with strength",
    ]  # no noise/blur rows: no pair checks
    assert "FID battery" in stdout and record["features"] in stdout
    # Exit 0 when every requirement holds, 1 (with one line saying how many fail) when not: random weights may fail.
    assert code == (0 if record["passed"] else 1), stderr
    assert record["passed"] or "battery requirement(s) fail" in stderr

    # Without the file: one error line naming where to put it, and nothing is fetched.
    code, _, stderr = run_cli(
        ["eval", "--sanity", "--out-dir", str(out), "--set", DATA, "--set", "eval.features=inception"]
    )
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    hub = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE
    assert code != 0 and len(errors) == 1 and str(hub) in errors[0] and "eval.inception_weights" in errors[0]
    assert not hub.exists()
