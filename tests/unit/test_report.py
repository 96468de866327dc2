"""``benchkit report``: the self-contained HTML page of a results directory, and (where Chromium is installed)
how a real browser shows it."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch

from benchkit.core.config import resolve
from benchkit.core.provenance import environment
from benchkit.results.report import REPORT_FILE, config_differences, stated_deviations, write_report
from benchkit.results.store import append_row
from benchkit.sampling.grids import reconstruction_grid, save_grid
from benchkit.sweeps.runner import write_outputs

CHROMIUM = Path("/usr/bin/chromium")
RUNS = {
    "vq-ar-ce-aaa": ("vq", "ar", "ce", ["train.steps=30"]),
    "kl-mar-diffloss-bbb": ("kl", "mar", "diffloss", ["generator.options.buffer_size=4", "train.hflip=true"]),
}


def _images(seed: int, n: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def make_results(root: Path, *, extra_columns: bool = True) -> Path:
    """A results directory ``root/mini`` as a sweep leaves it (rows, tables, plots, run and tokenizer folders with
    config.json, env.json, log.csv and grids), with made-up numbers; no training."""
    results = root / "mini"
    for i, (run, (tok, gen, head, sets)) in enumerate(RUNS.items()):
        rdir = root / "runs" / run
        rdir.mkdir(parents=True)
        cfg = resolve(
            "tiny",
            None,
            [f'tokenizer.name="{tok}"', f'generator.name="{gen}"', f'head.name="{head}"', f'out_dir="{root}"', *sets],
        )
        (rdir / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
        (rdir / "env.json").write_text(json.dumps({**environment("cpu"), "argv": ["benchkit", "sweep", "m.toml"]}))
        (rdir / "log.csv").write_text("step,loss,lr\n10,2.5,0.001\n20,2.0,0.001\n")
        save_grid(_images(i, 20), rdir / "samples.png", nrow=4)
        tdir = root / "tokenizers" / f"{tok}-t{i}"
        tdir.mkdir(parents=True)
        reconstruction_grid(_images(10 + i), _images(20 + i), tdir / "reconstructions.png")
        append_row(
            results,
            {
                "row_id": f"tok{i}",
                "kind": "tokenizer",
                "run": tdir.name,
                "tokenizer": tok,
                "grid": "4x4x1",
                "rfid": 10.5 + i,
                "psnr": 20.25,
                "params": 12345,
                "device": "cpu",
                "timestamp": f"2026-01-0{i + 1}T10:00:00",
            },
        )
        for j, (steps, cfg_scale) in enumerate([(4, 1.0), (8, 2.0)]):
            row = {
                "row_id": f"g{i}{j}",
                "kind": "generator",
                "run": run,
                "tokenizer": tok,
                "generator": gen,
                "head": head,
                "steps": steps,
                "cfg": cfg_scale,
                "features": "classifier",
                "fid": 100.0 / (1 + i + j) + 0.123,
                "images_per_s": 10.0 * (1 + i) * (2 - j),
                "params": 2_000_000 + i,
                "seed_spread_fid": 1.5 if j == 0 else None,
                "device": "cpu",
                "timestamp": f"2026-01-0{i + 1}T11:00:00",
            }
            if extra_columns:
                row |= {
                    "fid_vs_best": "*" if i + j else "best",
                    "deviations": f"buffer_size {4 + i} (MAR: 64); 50 diffusion steps (MAR: 100); 30 training steps",
                }
            append_row(results, row)
    write_outputs(results, root)  # tables and plots, as at the end of a sweep
    (results / "sub").mkdir()
    save_grid(_images(99, 2), results / "sub" / "extra.png")  # an image of a kind the report does not know
    return results


class _Tables(HTMLParser):
    """Per table id: the data-sort value of each cell of each body row, and the header texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.headers: dict[str, list[str]] = {}
        self.table: str | None = None
        self.in_th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id"):
            self.table = a["id"]
            self.rows[self.table], self.headers[self.table] = [], []
        elif self.table and tag == "tr" and "data-row-id" in a:
            self.rows[self.table].append([])
        elif self.table and tag == "td" and "data-sort" in a:
            self.rows[self.table][-1].append(a["data-sort"] or "")
        elif self.table and tag == "th" and "data-col" in a:
            self.in_th = True
            self.headers[self.table].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table = None
        if tag == "th":
            self.in_th = False

    def handle_data(self, data: str) -> None:
        if self.in_th and self.table:
            self.headers[self.table][-1] += data


def _same(csv_value: object, sort_key: str) -> bool:
    if csv_value is None or (isinstance(csv_value, float) and math.isnan(csv_value)):
        return sort_key == ""
    if isinstance(csv_value, (int, float)):
        return float(sort_key) == float(csv_value)
    return sort_key == str(csv_value)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    results = make_results(tmp_path_factory.mktemp("report"))
    path = write_report(results)
    return results, path.read_text(encoding="utf-8")


def test_every_row_and_column_of_the_tables_is_shown(report: tuple[Path, str]) -> None:
    results, html = report
    parsed = _Tables()
    parsed.feed(html)
    for csv_name, table_id in (("table.csv", "generators-table"), ("tokenizers.csv", "tokenizers-table")):
        df = pd.read_csv(results / csv_name)
        shown = [c for c in df.columns if c not in ("row_id", "config_fingerprint", "git_sha", "timestamp", "device")]
        assert parsed.headers[table_id] == shown  # extra columns (marks, deviations) included, in CSV order
        assert len(parsed.rows[table_id]) == len(df) > 0
        for cells, (_, row) in zip(parsed.rows[table_id], df.iterrows()):
            assert all(_same(row[c], cell) for c, cell in zip(shown, cells)), (list(row), cells)
        assert all(f'data-row-id="{rid}"' in html for rid in df["row_id"])


def test_every_image_is_embedded_and_nothing_is_loaded_from_the_network(report: tuple[Path, str]) -> None:
    results, html = report
    root = results.parent
    images = [*results.rglob("*.png"), *root.glob("runs/*/samples.png"), *root.glob("tokenizers/*/reconstructions.png")]
    assert len(images) == 3 + 1 + 2 + 2  # pareto, steps, training curves; sub/extra; two sample, two recon grids
    for img in images:
        assert base64.b64encode(img.read_bytes()).decode() in html, img
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", html, flags=re.I)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert not re.search(r"<link\b|@import|url\(|<iframe|<object|<embed", html, flags=re.I)
    assert "<script src" not in html.lower()


def test_provenance_deviations_and_differences(report: tuple[Path, str]) -> None:
    _, html = report
    assert "benchkit sweep m.toml" in html and "2026-01-01T10:00:00 to 2026-01-02T11:00:00" in html
    assert f'torch <span class="mono">{torch.__version__}</span>' in html
    assert "train.hflip" in html and "classifier" in html  # options switched on, metric features
    assert "buffer_size 5 (MAR: 64)" in html  # the deviations column, also listed per row
    first_mar = stated_deviations("generator", "mar")[0]
    assert first_mar.startswith("The head sees only the masked rows") and first_mar in html
    assert "seed_spread_fid is the FID difference" in html


def test_config_differences_name_value_and_default() -> None:
    cfg = resolve(
        "tiny",
        None,
        ['generator.name="mar"', 'head.name="diffloss"', "generator.options.buffer_size=4", "train.steps=30"],
    ).to_dict()
    diffs = {d["key"]: (d["value"], d["default"]) for d in config_differences(json.loads(json.dumps(cfg)))}
    assert diffs["generator.options.buffer_size"] == ("4", "8")
    assert diffs["train.steps"] == ("30", "500")
    assert diffs["generator.name"] == ('"mar"', '"ar"')
    assert "train.lr" in diffs and "seed" not in diffs and "out_dir" not in diffs
    assert stated_deviations("generator", "no-such") == []


def test_report_cli_and_rows_only_directory(tmp_path: Path, run_cli) -> None:
    results = make_results(tmp_path, extra_columns=False)
    for name in ("table.csv", "tokenizers.csv", "table.md"):
        (results / name).unlink()  # only rows.jsonl: the tables are rebuilt first, as `benchkit table` does
    code, out, err = run_cli(["report", str(results)])
    assert code == 0, err
    assert out.strip() == str(results / REPORT_FILE) and (results / "table.csv").is_file()
    html = (results / REPORT_FILE).read_text()
    assert html.count('data-row-id="g') == 4 and "Per row (deviations column)" not in html
    code, _, err = run_cli(["report", str(tmp_path / "missing")])
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli(["report", str(tmp_path / "runs")])
    assert code == 2 and "has no table.csv or rows.jsonl" in err


def _chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-dev-shm-usage",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_chromium_renders_the_page_and_sorts_columns(report: tuple[Path, str], tmp_path: Path) -> None:
    """A real browser: the page renders (a screenshot with content), and clicking the fid header sorts the rows."""
    from PIL import Image

    _, html = report
    page = tmp_path / "report.html"
    page.write_text(html)
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    assert shot.is_file(), "Chromium wrote no screenshot"
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 1600)
    lo, hi = img.getextrema()
    assert hi - lo > 100 and len(set(img.resize((60, 80)).getdata())) > 10  # text, tables and plots, not blank
    probe = (
        "<script>var th = Array.from(document.querySelectorAll('#generators-table th'))"
        ".find(function (h) { return h.textContent === 'fid'; }); th.click();"
        "document.title = Array.from(document.querySelectorAll('#generators-table tbody tr'))"
        ".map(function (r) { return r.dataset.rowId; }).join(',');</script></body>"
    )
    page.write_text(html.replace("</body>", probe))
    dom = _chromium("--dump-dom", page.as_uri()).stdout
    order = re.search(r"<title>([^<]*)</title>", dom)
    assert order is not None, dom[:500]
    fid = pd.read_csv(report[0] / "table.csv").sort_values("fid")["row_id"].tolist()
    assert order.group(1).split(",") == fid
