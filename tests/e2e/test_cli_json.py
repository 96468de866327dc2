"""Every result-printing command with ``--json`` prints one strict JSON document on stdout and nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, bk

pytestmark = pytest.mark.slow


def _json(*args: str) -> object:
    """Run ``benchkit ARGS --json``; stdout must parse as strict JSON (no NaN) as a whole."""
    p = bk(*args, "--json")
    return json.loads(p.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_every_command_prints_json(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference_run.parent.parent, out)  # runs, tokenizers and the feature cache: nothing retrains
    run = out / "runs" / reference_run.name

    trained = _json("train", "--out-dir", str(out), "--no-progress", *TINY)
    assert trained["run_dir"] == str(run) and trained["train"]["num_classes"] == 10

    tok = _json("train-tokenizer", "--out-dir", str(out), "--no-progress", *TINY)
    assert Path(tok["tokenizer_dir"]).is_dir() and tok["row"]["kind"] == "tokenizer" and tok["row"]["psnr"] > 0

    sample = _json("sample", str(run), "--per-class", "1", "--out", str(tmp_path / "grid.png"), "--no-progress")
    assert Path(sample["path"]).is_file() and sample["images"] == 10 and sample["settings"]["cfg"] == 1.0

    results = out / "tiny"
    rows = _json("eval", str(run), "--results", str(results), "--no-progress")
    assert isinstance(rows, list) and len(rows) == 1 and rows[0]["fid"] > 0

    sweep_file = tmp_path / "one.toml"
    sweep_file.write_text(
        'preset = "tiny"\nname = "tiny"\nset = [' + ", ".join(json.dumps(v) for v in TINY[1::2]) + "]\n"
    )
    for command in (["sweep", str(sweep_file)], ["run", "--sweep", str(sweep_file)]):
        report = _json(*command, "--out-dir", str(out), "--no-progress")
        assert report["done"] == ["vq+ar+ce"] and report["results_dir"] == str(results)
        assert {r["kind"] for r in report["rows"]} == {"tokenizer", "generator"}

    plots = _json("plot", str(results))["plots"]
    assert plots and all(Path(p).is_file() and p.endswith(".png") for p in plots)
    table = _json("table", str(results))
    assert any(r["kind"] == "generator" and r["fid"] == pytest.approx(rows[0]["fid"]) for r in table)
