"""A real sweep ends with report.html: every row, its sample grid, the tokenizer's reconstructions, the plots."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, bk, seed_cache

pytestmark = pytest.mark.slow


def test_sweep_writes_the_report(tmp_path: Path, feature_cache: Path) -> None:
    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    sets = [TINY[i + 1] for i in range(0, len(TINY), 2)]
    sweep = tmp_path / "one.toml"
    sweep.write_text(
        f'preset = "tiny"\nname = "one"\nset = {json.dumps(sets)}\n[[combos]]\n"eval.sweep" = [{{ cfg = 2.0 }}]\n'
    )
    p = bk("sweep", str(sweep), "--out-dir", str(out), "--no-progress", timeout=600)
    results = out / "one"
    assert str(results / "report.html") in p.stdout.splitlines()
    html = (results / "report.html").read_text()
    table = pd.read_csv(results / "table.csv")
    assert len(table) == 2 and all(f'data-row-id="{rid}"' in html for rid in table["row_id"])
    images = [*results.glob("*.png"), *out.glob("runs/*/samples.png"), *out.glob("tokenizers/*/reconstructions.png")]
    assert {i.name for i in images} >= {"pareto.png", "training_curves.png", "samples.png", "reconstructions.png"}
    for img in images:
        assert base64.b64encode(img.read_bytes()).decode() in html, img
    assert " ".join(["sweep", str(sweep)]) in html  # the command, from the run's env.json
