"""The rows.jsonl store, filters, sorting and table files."""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchkit.core.errors import ConfigError
from benchkit.core.files import atomic_write_bytes, atomic_write_text
from benchkit.results.seeds import table_rows
from benchkit.results.store import (
    ROWS_FILE,
    append_row,
    compact_rows,
    filter_rows,
    has_row,
    read_rows,
    sort_rows,
    tuning_selection,
)
from benchkit.results.tables import DETAIL, rich_table, table_columns, write_tables


def _writer(args: tuple[str, int, int]) -> None:
    results_dir, worker, n = args
    for i in range(n):
        append_row(Path(results_dir), {"row_id": f"w{worker}-{i}", "worker": worker, "i": i, "fid": float(i)})


def _context() -> mp.context.BaseContext:
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def test_concurrent_appends_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    workers, n = 4, 50
    with _context().Pool(workers) as pool:
        pool.map(_writer, [(str(tmp_path), w, n) for w in range(workers)])
    lines = (tmp_path / ROWS_FILE).read_text().splitlines()
    assert len(lines) == workers * n
    parsed = [json.loads(line) for line in lines]  # every line is whole
    ids = [r["row_id"] for r in parsed]
    assert len(set(ids)) == workers * n
    assert set(ids) == {f"w{w}-{i}" for w in range(workers) for i in range(n)}
    df = read_rows(tmp_path)
    assert len(df) == workers * n
    # Each worker's rows stay in its own order.
    for w in range(workers):
        assert df[df["worker"] == w]["i"].tolist() == list(range(n))


def test_last_occurrence_wins_and_has_row(tmp_path: Path) -> None:
    append_row(tmp_path, {"row_id": "a", "fid": 10.0})
    append_row(tmp_path, {"row_id": "b", "fid": 20.0})
    append_row(tmp_path, {"row_id": "a", "fid": 5.0, "extra_key": "kept"})
    df = read_rows(tmp_path)
    assert df["row_id"].tolist() == ["b", "a"]
    assert df.set_index("row_id").loc["a", "fid"] == 5.0
    assert df.set_index("row_id").loc["a", "extra_key"] == "kept"
    assert has_row(tmp_path, "a") and has_row(tmp_path, "b") and not has_row(tmp_path, "c")
    assert not has_row(tmp_path / "missing", "a")
    assert compact_rows(tmp_path) == 2
    assert len((tmp_path / ROWS_FILE).read_text().splitlines()) == 2


def test_tuned_rows_that_a_later_tuning_did_not_choose_leave_the_tables(tmp_path: Path) -> None:
    rows = [
        {"row_id": "plain", "cfg": 1.0},
        {"row_id": "a2", "cfg": 2.0, "tuned_in": "a"},
        tuning_selection("a", ["a2"]),
        {"row_id": "a3", "cfg": 3.0, "tuned_in": "a"},
        {"row_id": "b2", "cfg": 2.0, "tuned_in": "b"},
        tuning_selection("b", ["b2"]),
        tuning_selection("a", ["a3"]),
    ]
    for row in rows:
        append_row(tmp_path, row)
    assert list(read_rows(tmp_path)["row_id"]) == ["plain", "a3", "b2"]  # a2 superseded; the records never shown
    append_row(tmp_path, tuning_selection("a", ["a2"]))  # tuned back to the first choice
    assert list(read_rows(tmp_path)["row_id"]) == ["plain", "a2", "b2"]


def test_truncated_last_line_is_ignored_and_next_append_survives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    append_row(tmp_path, {"row_id": "a", "fid": 1.0})
    with open(tmp_path / ROWS_FILE, "a") as f:
        f.write('{"row_id": "b", "fi')  # a writer killed mid-line
    with caplog.at_level(logging.WARNING, logger="benchkit.results.store"):
        df = read_rows(tmp_path)
    assert df["row_id"].tolist() == ["a"]
    assert any("truncated last line" in r.message for r in caplog.records)
    append_row(tmp_path, {"row_id": "c", "fid": 3.0})
    assert read_rows(tmp_path)["row_id"].tolist() == ["a", "c"]


def test_values_are_cleaned_to_strict_json(tmp_path: Path) -> None:
    append_row(
        tmp_path,
        {
            "row_id": "x",
            "fid": float("nan"),
            "is_mean": np.float32(2.5),
            "steps": np.int64(8),
            "out": tmp_path,
            "grid": (4, 4),
        },
    )
    raw = json.loads((tmp_path / ROWS_FILE).read_text())
    assert raw == {"row_id": "x", "fid": None, "is_mean": 2.5, "steps": 8, "out": str(tmp_path), "grid": [4, 4]}
    with pytest.raises(TypeError, match="row_id"):
        append_row(tmp_path, {"row_id": 3})


def test_read_rows_empty_and_int_columns(tmp_path: Path) -> None:
    assert read_rows(tmp_path).empty
    append_row(tmp_path, {"row_id": "g", "kind": "generator", "steps": 8, "params": 1000})
    append_row(tmp_path, {"row_id": "t", "kind": "tokenizer", "steps": None, "params": 500})
    df = read_rows(tmp_path)
    assert str(df["steps"].dtype) == "Int64" and df["steps"].iloc[0] == 8 and pd.isna(df["steps"].iloc[1])


def test_atomic_writes(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["b.bin", "f.txt", "sub"]  # no temp files left


def _rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "row_id": "r1",
                "kind": "generator",
                "generator": "mar",
                "head": "diffloss",
                "tokenizer": "kl",
                "steps": 16,
                "fid": 41.23456,
                "images_per_s": 120.55,
                "params": 1_234_567,
                "features": "classifier",
                "git_sha": "abc",
            },
            {
                "row_id": "r2",
                "kind": "generator",
                "generator": "ar",
                "head": "ce",
                "tokenizer": "vq",
                "steps": 64,
                "fid": 55.5,
                "images_per_s": 30.0,
                "params": 900_000,
                "features": "classifier",
                "git_sha": "abc",
            },
            {
                "row_id": "r3",
                "kind": "generator",
                "generator": "mar",
                "head": "ce",
                "tokenizer": "vq",
                "steps": 8,
                "fid": None,
                "images_per_s": 300.0,
                "params": 1_000_000,
                "features": "classifier",
                "git_sha": "abc",
            },
            {
                "row_id": "t1",
                "kind": "tokenizer",
                "tokenizer": "vq",
                "rfid": 12.3456,
                "psnr": 24.5,
                "params": 50_000,
                "git_sha": "abc",
            },
        ]
    )


def test_write_tables_contents(tmp_path: Path) -> None:
    paths = write_tables(_rows(), tmp_path)
    assert set(paths) == {"table.csv", "table.md", "table.tex", "tokenizers.csv", "tokenizers.md", "tokenizers.tex"}
    assert all(p.exists() and p.parent == tmp_path for p in paths.values())
    gen = pd.read_csv(paths["table.csv"])
    assert gen["row_id"].tolist() == ["r1", "r2", "r3"]
    assert gen["fid"].iloc[0] == 41.23 and gen["fid"].iloc[1] == 55.5 and math.isnan(gen["fid"].iloc[2])
    assert gen["params"].tolist() == [1_234_567, 900_000, 1_000_000] and gen["steps"].tolist() == [16, 64, 8]
    cols = gen.columns.tolist()
    assert cols.index("generator") < cols.index("fid") < cols.index("images_per_s") < cols.index("row_id")
    assert "rfid" not in cols and "kind" not in cols  # empty and constant columns are left out
    tok = pd.read_csv(paths["tokenizers.csv"])
    assert tok["rfid"].tolist() == [12.35] and "fid" not in tok.columns
    md = paths["table.md"].read_text().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in md[:5]]
    assert cells[0][:3] == ["tokenizer", "generator", "head"] and "fid" in cells[0]
    align = dict(zip(cells[0], cells[1]))  # text left (":---"), numbers right ("---:")
    assert align["generator"].startswith(":") and align["fid"].endswith(":") and align["params"].endswith(":")
    row = dict(zip(cells[0], cells[2]))
    assert row["fid"] == "41.23" and row["params"] == "1.23M" and row["steps"] == "16"
    assert dict(zip(cells[0], cells[3]))["params"] == "900K" and dict(zip(cells[0], cells[4]))["fid"] == "-"
    assert "row_id" not in md[0] and "classifier" in paths["table.md"].read_text()
    tex = paths["table.tex"].read_text()
    assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex and "41.23" in tex
    assert "images\\_per\\_s" in tex
    assert "12.35" in paths["tokenizers.md"].read_text()


def test_write_tables_without_tokenizers(tmp_path: Path) -> None:
    paths = write_tables(_rows().iloc[:2], tmp_path)
    assert set(paths) == {"table.csv", "table.md", "table.tex"}


def test_filter_rows() -> None:
    df = _rows()
    assert filter_rows(df, ["head=ce"])["row_id"].tolist() == ["r2", "r3"]
    assert filter_rows(df, ["head=ce", "generator=mar"])["row_id"].tolist() == ["r3"]
    assert filter_rows(df, ["fid<50"])["row_id"].tolist() == ["r1"]
    assert filter_rows(df, ["steps >= 16"])["row_id"].tolist() == ["r1", "r2"]
    assert filter_rows(df, ["generator!=mar"])["row_id"].tolist() == ["r2", "t1"]
    assert filter_rows(df, []).equals(df)
    with pytest.raises(ConfigError, match="unknown column 'hed'.*valid: row_id, kind.*did you mean 'head'"):
        filter_rows(df, ["hed=ce"])
    with pytest.raises(ConfigError, match="bad filter"):
        filter_rows(df, ["head"])
    with pytest.raises(ConfigError, match="not a number"):
        filter_rows(df, ["fid<abc"])
    with pytest.raises(ConfigError, match="not numeric"):
        filter_rows(df, ["head<ce"])


def test_sort_rows() -> None:
    df = _rows()
    assert sort_rows(df, "fid", descending=False)["row_id"].tolist() == ["r1", "r2", "r3", "t1"]
    assert sort_rows(df, "images_per_s", descending=True)["row_id"].tolist() == ["r3", "r1", "r2", "t1"]
    with pytest.raises(ConfigError, match="unknown column 'speed'; valid: .*images_per_s"):
        sort_rows(df, "speed", descending=False)


def test_table_columns_and_rich_table() -> None:
    df = _rows()
    cols = table_columns(df.iloc[:3], provenance=False)
    assert cols[:4] == ["tokenizer", "generator", "head", "features"] and "git_sha" not in cols
    table = rich_table(df.iloc[:3], "runs")
    headers = [str(c.header) for c in table.columns]
    # long names wrap at their underscores; the names themselves are unchanged; the table folds training seeds
    shown = table_columns(table_rows(df.iloc[:3]), provenance=False)
    assert [c for c in shown if c not in ("n_seeds", "fid_seeds")] == cols and shown.index("n_seeds") > shown.index(
        "fid"
    )
    assert [h.replace("\n", "") for h in headers] == [c for c in shown if c not in DETAIL] and table.row_count == 3
    assert "images_\nper_\ns" in headers
    from rich.console import Console

    console = Console(file=io.StringIO(), width=300)
    console.print(table)
    out = console.file.getvalue()
    assert "41.23" in out and "runs" in out
    tok_table = rich_table(df.iloc[3:], "tokenizers")
    assert "rfid" in [str(c.header) for c in tok_table.columns]
