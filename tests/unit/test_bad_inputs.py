"""Bad input gives one clear ``error:`` line and exit code 2 (usage) or 1 (runtime), never a traceback.

Complements tests/unit/test_cli.py (which has its own cases); everything runs in-process through ``main()`` with a
tiny config, and the few cases that need a trained run share one, trained once per module in about a second.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import build_feature_cache

from benchkit.core.checkpoint import load_checkpoint

CliRunner = Callable[[list[str]], tuple[int, str, str]]  # the run_cli fixture of tests/conftest.py

# Tiny and quick, so that a case which wrongly passes validation trains for a second, not for minutes.
BASE = [
    "--set",
    "data.options={num_train = 32, num_test = 32}",
    "--set",
    "tokenizer.options.ch=8",
    "--set",
    "generator.options.width=32",
    "--set",
    "tokenizer_train.steps=2",
    "--set",
    "train.steps=2",
    "--set",
    "tokenizer_train.batch_size=8",
    "--set",
    "train.batch_size=8",
    "--set",
    "tokenizer_train.warmup_steps=1",
    "--set",
    "train.warmup_steps=1",
]
TRAIN_LIKE = ("train", "train-tokenizer", "run", "sweep")


def error_lines(err: str) -> list[str]:
    """The ``error:`` lines of stderr, with rich's soft wrapping undone."""
    return [ln for ln in err.splitlines() if ln.startswith(("error:", "Error:"))]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run directory (trained in-process, about a second)."""
    from benchkit.core.config import resolve
    from benchkit.training.generator import train_generator

    out = tmp_path_factory.mktemp("bad-inputs-run")
    sets = [BASE[i + 1] for i in range(0, len(BASE), 2)] + [f'out_dir="{out}"']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several times faster than 2 threads on a busy 2-core machine
    try:
        run = train_generator(resolve("tiny", None, sets), progress=False)
    finally:
        torch.set_num_threads(threads)
    build_feature_cache(out / "_cache", sets, steps=5)  # an eval case that gets too far stays quick
    assert (run.dir / "model.safetensors").is_file()
    return run.dir


@pytest.fixture()
def no_inception(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Inception-V3 weights anywhere benchkit looks (env var unset, empty torch hub)."""
    monkeypatch.delenv("BENCHKIT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


# --------------------------------------------------------------------------------------------- set-up helpers
def _png(path: Path, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), colour).save(path)


def _empty_classes(tmp: Path) -> str:
    for name in ("cats", "dogs"):
        (tmp / "imgs" / name).mkdir(parents=True)
    return str(tmp / "imgs")


def _corrupt_images(tmp: Path) -> str:
    for name in ("cats", "dogs"):
        for i in range(3):
            p = tmp / "imgs" / name / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"\x89PNG\r\n\x1a\n this is not really an image")
    return str(tmp / "imgs")


def _few_images(tmp: Path) -> str:
    for c, name in enumerate(("red", "blue")):
        for i in range(3):  # 2 train + 1 test image per class: fewer than a batch of 8
            _png(tmp / "imgs" / name / f"{i}.png", (200, 0, 0) if c == 0 else (0, 0, 200))
    return str(tmp / "imgs")


def _text_file(name: str, text: str) -> Callable[[Path], str]:
    """A set-up that writes ``text`` to tmp/name and returns its path."""

    def write(tmp: Path) -> str:
        (tmp / name).write_text(text)
        return str(tmp / name)

    return write


SETUPS: dict[str, Callable[[Path], str]] = {
    "empty": _empty_classes,
    "corrupt": _corrupt_images,
    "few": _few_images,
    "blocker": _text_file("blocker", "a file where a folder should be"),
    "sweep": _text_file("sweep.toml", 'preset = "tiny"\n[grids]\n"generator.name" = ["ar"]\n'),
    "badtoml": _text_file("bad.toml", "[train\nsteps = 3\n"),
    "keyfile": _text_file("cfg.toml", "[train]\nstpes = 3\n"),
}

# (id, args, exit code, regex on the error line). "{x}" placeholders are filled by SETUPS[x](tmp_path);
# "{missing}" is a path that does not exist. Train-like commands get BASE (tiny sizes) prepended to their options.
# fmt: off
CASES = [
    # unknown names, with suggestions
    ("unknown-tokenizer", ["train", "--set", "tokenizer.name=vqq"], 2,
     r"unknown tokenizer 'vqq'; valid: kl, rq, vq; did you mean 'vq'"),
    ("unknown-generator", ["train", "--set", "generator.name=marr"], 2,
     r"unknown generator 'marr'; valid: ar, mar, randar, rqtransformer; did you mean 'mar'"),
    ("unknown-features", ["train", "--set", "eval.features=incepton"], 2,
     r"unknown feature extractor 'incepton'.*did you mean 'inception'"),
    ("unknown-preset-suggests", ["train", "--preset", "tiney"], 2, r"unknown preset 'tiney'.*did you mean 'tiny'"),
    ("unknown-dataset-suggests", ["train", "--set", "data.name=mnsit"], 2,
     r"unknown dataset 'mnsit'.*did you mean 'mnist'"),
    ("train-tokenizer-unknown", ["train-tokenizer", "kll"], 2, r"unknown tokenizer 'kll'.*did you mean 'kl'"),
    # incompatible combinations
    ("incompatible-rq-mar", ["train", "--set", "tokenizer.name=rq", "--set", "generator.name=mar"], 2,
     r"rq \+ mar \+ ce cannot work: mar models one token per position"),
    ("incompatible-kl-rqtransformer",
     ["train", "--set", "tokenizer.name=kl", "--set", "generator.name=rqtransformer", "--set", "head.name=diffloss"],
     2, r"kl \+ rqtransformer \+ diffloss cannot work: rqtransformer needs stacked tokens"),
    # unknown config keys
    ("unknown-top-level-key", ["train", "--set", "seeds=1"], 2, r"unknown config key 'seeds'.*did you mean 'seed'"),
    ("unknown-sample-key", ["train", "--set", "sample.temprature=0.5"], 2,
     r"unknown config key 'sample.temprature'.*did you mean 'temperature'"),
    ("unknown-head-option", ["train", "--set", "head.options.topk=5"], 2,
     r"unknown option head.ce.topk.*did you mean 'top_k'"),
    ("unknown-dataset-option", ["train", "--set", "data.options={num_train = 64, num_tset = 5}"], 2,
     r"unknown option dataset.shapes.num_tset.*did you mean 'num_test'"),
    ("unknown-eval-sweep-key", ["train", "--set", "eval.sweep=[{cfgg = 2.0}]"], 2,
     r"eval.sweep\[0\]: unknown sampling setting 'cfgg'; valid: steps, cfg, .*did you mean 'cfg'"),
    ("unknown-key-in-config-file", ["train", "--config", "{keyfile}"], 2, r"unknown config key|stpes"),
    ("unknown-sweep-key", ["sweep", "{sweep}"], 2, r"unknown sweep key 'grids'"),
    ("override-without-equals", ["train", "--set", "train.steps"], 2, r"must look like key.path=value"),
    ("override-of-a-section", ["train", "--set", "data=3"], 2, r"'data' is a section"),
    ("override-below-a-value", ["train", "--set", "train.steps.x=3"], 2, r"'train.steps' is a value, not a section"),
    ("unparsable-config-file", ["train", "--config", "{badtoml}"], 2, r"cannot parse config file"),
    # wrong types
    ("steps-not-int", ["train", "--set", "train.steps=abc"], 2, r"train.steps = 'abc' has the wrong type; expected int"),
    ("steps-float", ["train", "--set", "train.steps=1.5"], 2, r"train.steps = 1.5 has the wrong type"),
    ("option-wrong-type", ["train", "--set", "generator.options.width=wide"], 2,
     r"generator.ar.width = 'wide' has the wrong type; expected int"),
    ("bool-wrong-type", ["train", "--set", "eval.prc=maybe"], 2, r"eval.prc = 'maybe' has the wrong type"),
    ("literal-not-valid", ["train", "--set", "train.schedule=cosin"], 2, r"'cosin' is not valid; valid: 'cosine'"),
    # out-of-range values
    ("negative-steps", ["train", "--set", "train.steps=-5"], 2, r"steps must be >= 1, got -5"),
    ("batch-size-zero", ["train", "--set", "train.batch_size=0"], 2, r"batch_size must be >= 1, got 0"),
    ("cfg-negative", ["train", "--set", "sample.cfg=-1"], 2, r"cfg must be >= 0, got -1"),
    ("temperature-negative", ["train", "--set", "sample.temperature=-1"], 2, r"temperature must be >= 0 \(0 = greedy\), got -1"),
    ("lr-zero", ["train", "--set", "tokenizer_train.lr=0"], 2, r"lr must be > 0"),
    ("image-size-tiny", ["train", "--set", "data.image_size=4"], 2, r"image_size must be >= 8, got 4"),
    ("codebook-too-small", ["train", "--set", "tokenizer.options.codebook_size=1"], 2, r"codebook_size must be >= 2"),
    ("dataset-size-zero", ["train", "--set", "data.options={num_train = 0}"], 2, r"num_train must be >= 1"),
    ("eval-sweep-cfg-negative", ["train", "--set", "eval.sweep=[{cfg = -2.0}]"], 2, r"eval.sweep\[0\]: cfg must be >= 0"),
    ("shard-not-i-of-n", ["run", "--shard", "abc"], 2, r"--shard 'abc' must look like i/n"),
    ("run-tune-reference-below-2", ["run", "--set", "eval.tune_reference=1"], 2,  # said once, not once per combo
     r"no valid combination: eval: tune_reference must be >= 2 \(or unset: as many as tune_samples\), got 1$"),
    # data
    ("imagefolder-missing", ["train", "--set", 'data.name="imagefolder:{missing}"', "--set", "data.options={}"], 1,
     r"image folder .* does not exist or is not a folder"),
    ("imagefolder-empty", ["train", "--set", 'data.name="imagefolder:{empty}"', "--set", "data.options={}"], 1,
     r"no image files in the class folders"),
    ("imagefolder-all-corrupt", ["train", "--set", 'data.name="imagefolder:{corrupt}"', "--set", "data.options={}"], 1,
     r"none of the \d+ image files of the train split .* could be read"),
    ("imagefolder-without-path", ["train", "--set", 'data.name="imagefolder"', "--set", "data.options={}"], 2,
     r"path must be set: use the dataset name imagefolder:PATH"),
    ("path-on-pathless-dataset", ["train", "--set", 'data.name="shapes:/tmp"'], 2,
     r"dataset 'shapes' takes no path, so 'shapes:/tmp' is invalid"),
    ("dataset-smaller-than-batch", ["train", "--set", "data.options={num_train = 4, num_test = 4}"], 1,
     r"has 4 training images, fewer than one batch \(tokenizer_train.batch_size = 8\)"),
    ("imagefolder-smaller-than-batch", ["train", "--set", 'data.name="imagefolder:{few}"', "--set", "data.options={}"],
     1, r"training images, fewer than one batch"),
    # feature network without weights, checked before any training
    ("inception-offline-at-train", ["train", "--set", "eval.features=inception"], 2,
     r"needs Inception-V3 weights, not found.*never downloads"),
    ("inception-named-file-missing", ["train", "--set", 'eval.inception_weights="{missing}"'], 2,
     r"needs Inception-V3 weights, not found"),
    # outputs that cannot be written
    ("out-dir-under-a-file-tokenizer", ["train-tokenizer", "--out-dir", "{blocker}/sub"], 2, r"cannot be written"),
    ("sweep-out-dir-under-a-file", ["run", "--out-dir", "{blocker}/sub"], 2, r"cannot be written"),
    # command-level usage
    ("eval-without-run", ["eval"], 2, r"needs a RUN directory"),
    ("table-without-rows", ["table", "{missing}"], 2, r"has no rows.jsonl"),
]
# fmt: on


def _fill(args: list[str], tmp: Path) -> list[str]:
    out = []
    for a in args:
        for key, make in SETUPS.items():
            if "{" + key + "}" in a:
                a = a.replace("{" + key + "}", make(tmp))
        out.append(a.replace("{missing}", str(tmp / "does-not-exist")))
    return out


def _check_one_line(code: int, err: str, want_code: int, pattern: str) -> str:
    lines = error_lines(err)
    assert code == want_code, f"exit {code}, wanted {want_code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"wanted one error line, got {len(lines)}:\n{err}"
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("case_id, args, code, pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_one_line(
    case_id, args, code, pattern, capsys, monkeypatch, tmp_path, no_inception, run_cli: CliRunner
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one error per line, however long
    args = _fill(args, tmp_path)
    if args[0] in TRAIN_LIKE:
        args = [args[0], *args[1:], "--no-progress"]
        if "--out-dir" not in args:
            args += ["--out-dir", str(tmp_path / "out")]
        args[1:1] = BASE if args[0] != "sweep" else []
    got, _, err = run_cli(args)
    _check_one_line(got, err, code, pattern)


# -------------------------------------------------------------------------------------- cases on a trained run
# fmt: off
RUN_CASES = [
    ("sample-temperature-negative", ["sample", "{run}", "--temperature", "-0.5"], 2, r"temperature must be >= 0 \(0 = greedy\), got -0.5"),
    ("sample-cfg-negative", ["sample", "{run}", "--cfg", "-1"], 2, r"cfg must be >= 0, got -1"),
    ("sample-unknown-cfg-schedule", ["sample", "{run}", "--cfg-schedule", "cosine"], 2,
     r"unknown cfg_schedule 'cosine'; valid: constant, linear"),
    ("sample-steps-zero", ["sample", "{run}", "--steps", "0"], 2, r"steps must be >= 1, got 0"),
    ("sample-out-under-a-file", ["sample", "{run}", "--out", "{blocker}/grid.png"], None, r"blocker"),
    ("eval-non-eval-override", ["eval", "{run}", "--set", "train.steps=5"], 2, r"eval only accepts eval.\* and sample.\*"),
    ("eval-inception-offline", ["eval", "{run}", "--set", "eval.features=inception"], 2,
     r"Inception-V3 weights not found|needs Inception-V3 weights"),
    ("eval-unknown-features", ["eval", "{run}", "--set", "eval.features=incepton"], 2,
     r"unknown feature extractor 'incepton'"),
    ("eval-unknown-sweep-key", ["eval", "{run}", "--set", "eval.sweep=[{cfgg = 2.0}]"], 2,
     r"eval.sweep\[0\]: unknown sampling setting 'cfgg'; valid: steps, cfg, .*did you mean 'cfg'"),
]
# fmt: on


@pytest.mark.parametrize("case_id, args, code, pattern", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_input_on_a_run(
    case_id, args, code, pattern, tiny_run, capsys, monkeypatch, tmp_path, no_inception, run_cli: CliRunner
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    args = [a.replace("{run}", str(tiny_run)) for a in _fill(args, tmp_path)]
    got, _, err = run_cli(args)
    _check_one_line(got, err, code if code is not None else got, pattern)
    assert got in (1, 2)


def _copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run's out-dir (run and tokenizer), to damage without touching the shared one."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_run.parent.parent, root, ignore=shutil.ignore_patterns("_cache"))
    return root / "runs" / tiny_run.name


@pytest.mark.parametrize(
    "damage, pattern",
    [
        ("truncate-weights", r"does not match its recorded sha256 \(truncated or modified\)"),
        ("flip-a-byte", r"does not match its recorded sha256"),
        ("corrupt-json", r"checkpoint metadata .* is corrupt"),
        ("edit-config", r"does not describe the weights .* was config.json edited"),
        ("remove-tokenizer", r"checkpoint .*tokenizers.*model.* is missing"),
    ],
)
def test_damaged_run_is_refused_with_exit_1(
    damage, pattern, tiny_run, capsys, monkeypatch, tmp_path, run_cli: CliRunner
) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    rdir = _copy_run(tiny_run, tmp_path)
    weights = rdir / "model.safetensors"
    if damage == "truncate-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip-a-byte":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "corrupt-json":
        (rdir / "model.json").write_text('{"sha256": "abc", "step": ')
    elif damage == "edit-config":
        cfg = json.loads((rdir / "config.json").read_text())
        cfg["train"]["lr"] = cfg["train"]["lr"] * 2
        (rdir / "config.json").write_text(json.dumps(cfg))
    elif damage == "remove-tokenizer":
        shutil.rmtree(rdir.parent.parent / "tokenizers")
    got, _, err = run_cli(["sample", str(rdir), "--out", str(tmp_path / "g.png")])
    _check_one_line(got, err, 1, pattern)
    assert not (tmp_path / "g.png").exists()


def test_resuming_a_directory_of_another_config_is_refused(
    tiny_run, capsys, monkeypatch, tmp_path, run_cli: CliRunner
) -> None:
    """A run directory whose checkpoint came from another config is never continued."""
    from benchkit.core.config import resolve
    from benchkit.training.artifacts import run_dir

    monkeypatch.setenv("COLUMNS", "300")
    out = tmp_path / "out"
    other = ["--set", "train.lr=0.0005"]
    sets = [BASE[i + 1] for i in range(0, len(BASE), 2)] + [f'out_dir="{out}"', "train.lr=0.0005"]
    target = run_dir(resolve("tiny", None, sets))
    shutil.copytree(tiny_run.parent.parent / "tokenizers", out / "tokenizers")
    target.mkdir(parents=True)
    for name in ("checkpoint.safetensors", "checkpoint.json"):
        shutil.copy(tiny_run / name, target / name)
    got, _, err = run_cli(["train", *BASE, *other, "--out-dir", str(out), "--no-progress"])
    _check_one_line(got, err, 1, r"was made with a different config; use a new --out-dir")


def test_no_resume_refuses_an_unfinished_run(tiny_run, capsys, monkeypatch, tmp_path, run_cli: CliRunner) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    rdir = _copy_run(tiny_run, tmp_path)
    for name in ("model.safetensors", "model.json"):
        (rdir / name).unlink()
    meta = json.loads((rdir / "checkpoint.json").read_text())
    meta["step"] = 1  # as if killed after one of its two steps
    (rdir / "checkpoint.json").write_text(json.dumps(meta))
    args = ["train", *BASE, "--out-dir", str(rdir.parent.parent), "--no-progress"]
    got, _, err = run_cli([*args, "--no-resume"])
    _check_one_line(got, err, 1, r"holds an unfinished run; pass --resume")
    got, out, err = run_cli(args)  # --resume (the default) finishes it
    assert got == 0, err
    assert Path(out.strip().splitlines()[-1]) == rdir and (rdir / "model.safetensors").is_file()


def test_absurd_learning_rate_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    capsys, monkeypatch, tmp_path, run_cli: CliRunner
) -> None:
    """NaN/inf loss at the CLI: exit 1, one line naming the step; the checkpoint left behind is finite."""
    monkeypatch.setenv("COLUMNS", "300")
    args = [
        "train",
        *BASE,
        "--out-dir",
        str(tmp_path),
        "--no-progress",
        "--set",
        "tokenizer_train.lr=1e30",
        "--set",
        "tokenizer_train.steps=6",
        "--set",
        "tokenizer_train.checkpoint_every=1",
    ]
    got, _, err = run_cli(args)
    line = _check_one_line(
        got,
        err,
        1,
        r"tokenizer vq: loss became (nan|inf|-inf) at step (\d+); "
        r"last good checkpoint \(step (\d+)\) kept in",
    )
    step, good = (int(x) for x in re.search(r"at step (\d+); last good checkpoint \(step (\d+)\)", line).groups())
    assert good == step, "the checkpoint of the last finished step is kept"
    tdir = Path(re.search(r"kept in (\S+?);", line).group(1))
    tensors, meta = load_checkpoint(tdir / "checkpoint")
    assert meta["step"] == good
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point()), "a NaN was saved"
    assert not (tdir / "model.json").exists(), "a diverged tokenizer must not be published"
