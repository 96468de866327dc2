"""`benchkit eval --sanity` on the embedded dataset: real held-out images score far better than noise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_sanity_ladder_cli_is_monotone(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "benchkit", "eval", "--sanity", "--out-dir", str(tmp_path),
         "--set", "eval.num_samples=1000", "--set", "data.options={num_train = 6000, num_test = 2000}"],
        capture_output=True, text=True, timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    ladder = json.loads(p.stdout)
    fids = [fid for _, fid in ladder["rows"]]
    assert ladder["monotone"] is True and len(fids) == 4
    assert fids == sorted(fids)
    assert fids[-1] > 20 * max(fids[0], 1e-3), f"noise should be far worse than held-out real images: {fids}"
    assert ladder["features"].startswith("dataset-cnn@")
