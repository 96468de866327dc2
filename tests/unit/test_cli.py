"""CLI: exit codes 0/1/2, one-line errors with choices, JSON output, README snippet."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

CliRunner = Callable[[list[str]], tuple[int, str, str]]  # the run_cli fixture of tests/conftest.py


def test_version_and_help(capsys, monkeypatch, run_cli: CliRunner) -> None:
    code, out, _ = run_cli(["--version"])
    assert code == 0 and re.match(r"benchkit \d+\.\d+", out)
    code, out, _ = run_cli(["--help"])
    assert code == 0 and "components" in out and "sweep" in out


def test_components_json_lists_every_family(capsys, monkeypatch, run_cli: CliRunner) -> None:
    code, out, _ = run_cli(["components", "--json"])
    data = json.loads(out)
    assert code == 0 and set(data) == {"tokenizers", "generators", "heads", "datasets", "features"}
    heads = {e["name"]: e for e in data["heads"]}
    assert {"ce", "diffloss"} <= set(heads) and heads["diffloss"]["summary"] and "options" in heads["diffloss"]


def test_compat_table_marks_ce_on_kl_invalid(capsys, monkeypatch, run_cli: CliRunner) -> None:
    code, out, _ = run_cli(["components", "--compat", "--json"])
    rows = {(r["tokenizer"], r["generator"], r["head"]): r["status"] for r in json.loads(out)}
    assert rows[("vq", "ar", "ce")] == "ok" and rows[("kl", "mar", "diffloss")] == "ok"
    assert rows[("kl", "ar", "ce")] != "ok" and rows[("vq", "rqtransformer", "ce")] != "ok"


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["components", "headz"], r"unknown family 'headz'; valid: tokenizers.*did you mean 'heads'"),
        (
            ["train", "--set", "head.name=difloss"],
            r"unknown head 'difloss'; valid: ce, diffloss; did you mean 'diffloss'",
        ),
        (["train", "--set", "tokenizer.name=kl"], r"kl \+ ar \+ ce cannot work.*valid heads for kl \+ ar: diffloss"),
        (["train", "--set", "generator.name=rqtransformer"], r"valid heads for vq \+ rqtransformer: none"),
        (["train", "--set", "train.lrr=1"], r"unknown config key 'train.lrr'"),
        (["train", "--preset", "huge"], r"unknown preset 'huge'"),
        (
            ["train", "--set", "tokenizer.options.codebok_size=3"],
            r"unknown option tokenizer.vq.codebok_size.*did you mean 'codebook_size'",
        ),
        (["train", "--set", "data.name=shapez"], r"unknown dataset 'shapez'.*did you mean 'shapes'"),
        (["train", "--device", "tpu"], r"device = 'tpu' is not valid"),
        (["sweep", "missing.toml"], r"sweep file 'missing.toml' does not exist"),
        (["run", "--shard", "3/2"], r"--shard '3/2'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, pattern, capsys, monkeypatch, tmp_path, run_cli: CliRunner) -> None:
    code, out, err = run_cli([*args, "--no-progress"] if args[0] in ("train", "run", "sweep") else args)
    assert code == 2, err
    assert re.search(pattern, err.replace("\n", " ")), err
    assert "Traceback" not in err


def test_sample_on_missing_run_exits_1(capsys, monkeypatch, tmp_path, run_cli: CliRunner) -> None:
    code, _, err = run_cli(["sample", str(tmp_path)])
    assert code == 1 and "is not a run directory" in err


def test_unwritable_out_dir_is_refused(capsys, monkeypatch, tmp_path, run_cli: CliRunner) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["train", "--out-dir", str(blocker / "sub"), "--no-progress"])
    assert code == 2 and "cannot be written" in err


def test_readme_head_example_registers_and_samples() -> None:
    """The 'Adding a component' snippet of the README runs as written."""
    import torch

    from benchkit.core.interfaces import TokenSpec
    from benchkit.core.registry import HEADS

    text = (Path(__file__).parents[2] / "README.md").read_text()
    code = re.search(r"```python\n# my_heads.py\n(.*?)```", text, re.DOTALL)
    assert code, "README lost its component example"
    if "linear_ce" not in HEADS:
        import types

        module = types.ModuleType("readme_example")
        sys.modules["readme_example"] = module
        exec(compile(code.group(1), "README.md", "exec"), module.__dict__)
    try:
        head = HEADS.create("linear_ce", spec=TokenSpec("discrete", (2, 2), vocab_size=7), cond_dim=5)
        cond = torch.randn(6, 5)
        loss = head.loss(cond, torch.randint(0, 7, (6,)))
        assert loss.ndim == 0 and torch.isfinite(loss)
        ids = head.sample(torch.cat([cond, cond]), cfg=2.0, generator=torch.Generator().manual_seed(0))
        assert ids.shape == (6,) and int(ids.max()) < 7
    finally:  # keep the global registry as the other tests expect it
        HEADS._entries.pop("linear_ce", None)
