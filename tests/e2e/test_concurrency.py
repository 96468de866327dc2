"""Two ``benchkit sweep --shard`` processes writing one results directory at the same time lose and duplicate no
row, and train their shared tokenizer once (the other shard waits on its lock and reuses it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import TINY, assert_trains_alone_to, bk_cmd, cli_env, seed_cache

pytestmark = pytest.mark.slow


def _sweep_file(path: Path) -> Path:
    sets = [TINY[i + 1] for i in range(0, len(TINY), 2)]
    lines = [
        'preset = "tiny"',
        'name = "conc"',
        "set = [" + ", ".join(json.dumps(s) for s in sets) + "]",
        "[grid]",
        '"train.lr" = [0.001, 0.002]',
        '"generator.options.depth" = [1, 2]',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_two_shards_on_one_results_directory(tmp_path: Path, feature_cache: Path) -> None:
    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    sweep = _sweep_file(tmp_path / "conc.toml")
    procs = [
        subprocess.Popen(
            bk_cmd("sweep", str(sweep), "--shard", f"{i}/2", "--out-dir", str(out), "--no-progress"),
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"shard {i}/2 failed:\n{err[-4000:]}"
        assert f"2 of 4 valid jobs in shard {i}/2" in err.replace("\n", " ")

    # Raw lines, not the de-duplicated table: every row is written exactly once and every line is whole.
    lines = (out / "conc" / "rows.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    gen = [r for r in rows if r["kind"] == "generator"]
    tok = [r for r in rows if r["kind"] == "tokenizer"]
    assert len(gen) == 4 and len({r["row_id"] for r in gen}) == 4, [r["run"] for r in gen]
    assert len({r["config_fingerprint"] for r in gen}) == 4
    assert len(tok) == 1, f"the shared tokenizer was evaluated {len(tok)} times"
    assert all(r["fid"] is not None and r["fid"] > 0 for r in gen)

    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 4 and all((r / "model.safetensors").is_file() for r in runs)
    configs = {
        (
            json.loads((r / "config.json").read_text())["train"]["lr"],
            json.loads((r / "config.json").read_text())["generator"]["options"]["depth"],
        )
        for r in runs
    }
    assert configs == {(0.001, 1), (0.001, 2), (0.002, 1), (0.002, 2)}

    # One tokenizer, trained by one shard only: its log has each step once, and only one process calibrated it.
    tok_dirs = list((out / "tokenizers").iterdir())
    assert len(tok_dirs) == 1
    steps = [int(line.split(",")[0]) for line in (tok_dirs[0] / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(2, 49, 2))
    calibrations = sum(err.count("continuous-token scale factor") for _, err in outputs)
    assert calibrations == 1, f"the tokenizer was trained {calibrations} times"


def test_jobs_runs_the_sweep_in_two_processes_each_job_once(tmp_path: Path, feature_cache: Path) -> None:
    """``--jobs 2``: two job processes share the sweep's jobs by claiming them; the parent writes the tables once."""
    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    sweep = _sweep_file(tmp_path / "conc.toml")
    proc = subprocess.run(
        bk_cmd("sweep", str(sweep), "--jobs", "2", "--out-dir", str(out), "--no-progress"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    err = " ".join(proc.stderr.split())
    assert "4 valid jobs in 2 processes of 1 thread(s) each" in err
    pids = {
        line.split("[job process ")[1].split("]")[0] for line in proc.stderr.splitlines() if "[job process " in line
    }
    assert len(pids) == 2, pids  # both processes ran jobs

    rows = [json.loads(line) for line in (out / "conc" / "rows.jsonl").read_text().splitlines() if line.strip()]
    gen = [r for r in rows if r["kind"] == "generator"]
    assert len(gen) == 4 and len({r["config_fingerprint"] for r in gen}) == 4
    assert sum(r["kind"] == "tokenizer" for r in rows) == 1
    table = (out / "conc" / "table.csv").read_text().splitlines()
    assert len(table) == 1 + 4  # header + one line per generator row, written by the parent from every row
    assert (out / "conc" / "report.html").is_file()
    assert not list((out / "conc").glob(".claims-*")), "the claims directory is left behind"
    assert {json.loads((r / "config.json").read_text())["threads"] for r in (out / "runs").iterdir()} == {1}

    # a job trained in a job process is the run the same config trains alone at the same thread count, bit for bit
    assert_trains_alone_to(
        out / "runs",
        feature_cache,
        tmp_path / "alone",
        "--threads",
        "1",
        "--set",
        "train.lr=0.002",
        "--set",
        "generator.options.depth=2",
    )
