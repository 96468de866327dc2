"""Run config: presets, files, --set overrides with type checks, and errors that list valid keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchkit.core.config import RunConfig, apply_override, preset_names, resolve
from benchkit.core.errors import ConfigError
from benchkit.core.identity import fingerprint


def test_presets_ship_and_resolve() -> None:
    assert {"tiny", "small"} <= set(preset_names())
    cfg = resolve("tiny")
    assert isinstance(cfg, RunConfig) and cfg.data.name == "shapes" and cfg.tokenizer.name == "vq"
    assert cfg.generator.name == "ar" and cfg.head.name == "ce"


def test_overrides_are_typed() -> None:
    cfg = resolve(
        "tiny",
        None,
        [
            "train.lr=3e-4",
            "train.steps=7",
            "sample.cfg=2",
            "tokenizer.options.codebook_size=64",
            "eval.sweep=[{steps = 4}]",
            "data.root=/tmp/x",
        ],
    )
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 7 and cfg.sample.cfg == 2.0 and isinstance(cfg.sample.cfg, float)
    assert cfg.tokenizer.options == {"codebook_size": 64} and cfg.eval.sweep == [{"steps": 4}]
    assert cfg.data.root == "/tmp/x"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", r"unknown config key 'train.lrr'; valid: steps, batch_size, lr.*did you mean 'lr'"),
        ("train.lr=fast", r"train.lr = 'fast' has the wrong type; expected float"),
        ("train.steps=1.5", r"expected int"),
        ("train.steps=0", r"steps must be >= 1"),
        ("train.batch_size=0", r"batch_size must be >= 1"),
        ("sample.temperature=-1", r"temperature must be >= 0 \(0 = greedy\)"),
        ("sample.cfg=-1", r"cfg must be >= 0"),
        ("sample.cfg_schedule=cosine", r"valid: 'constant', 'linear'"),
        ("device=tpu", r"valid: 'auto', 'cpu', 'cuda', 'mps'"),
        ("bogus=1", r"unknown config key 'bogus'; valid: name, seed"),
        ("train=1", r"'train' is a section"),
        ("train.lr", r"must look like key.path=value"),
    ],
)
def test_bad_overrides(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve("tiny", None, [override])


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'tiyn'; valid: .*tiny.*did you mean 'tiny'"):
        resolve("tiyn")


def test_config_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[train]\nsteps = 11\n[generator]\nname = "mar"\n')
    cfg = resolve("tiny", f, ["train.lr=0.01"])
    assert cfg.train.steps == 11 and cfg.generator.name == "mar" and cfg.train.lr == 0.01
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"seed": 5}))
    assert resolve(None, j).seed == 5
    with pytest.raises(ConfigError, match="does not exist"):
        resolve("tiny", tmp_path / "missing.toml")


def test_round_trip_and_fingerprint() -> None:
    cfg = resolve("tiny")
    raw = cfg.to_dict()
    again = resolve(None, None, [])
    assert fingerprint(cfg) != fingerprint(again) or cfg == again
    assert fingerprint(cfg.train) == fingerprint(resolve("tiny").train)
    apply_override(raw, "train.lr=0.5")
    assert raw["train"]["lr"] == 0.5
