"""Reading released containers safely, and one clear line for every bad checkpoint."""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import pytest
import torch

from benchkit.core.errors import CheckpointError, ConfigError
from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.importers import common, kl16, mar, rq

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "official"


class Payload:
    """A class that a plain unpickler would instantiate; weights_only must refuse it."""


def test_only_tensors_and_namespace_are_unpickled(tmp_path: Path) -> None:
    good = tmp_path / "ns.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(a=1)}, good)
    assert common.read_container(good)["args"].a == 1
    bad = tmp_path / "obj.pth"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Payload()}, bad)
    with pytest.raises(CheckpointError, match="refused for safety"):
        common.read_container(bad)


def test_truncated_missing_and_non_dict_files(tmp_path: Path) -> None:
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((FIX / "kl16" / "kl16.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        common.read_container(cut)
    with pytest.raises(CheckpointError, match="does not exist"):
        common.read_container(tmp_path / "nope.pth")
    lone = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), lone)
    with pytest.raises(CheckpointError, match="not a dict"):
        common.read_container(lone)


def test_container_key_choice_and_errors() -> None:
    container = common.read_container(FIX / "mar" / "checkpoint-last.pth")
    assert common.pick_weights(container, mar.CONTAINER_KEYS, "f")[1] == "model_ema"  # EMA by default
    assert common.pick_weights(container, mar.CONTAINER_KEYS, "f", "model")[1] == "model"
    with pytest.raises(CheckpointError, match="no 'state_dict_ema' or 'state_dict' entry; it holds: model, model_ema"):
        common.pick_weights(container, rq.CONTAINER_KEYS, "f")


def test_layout_errors_name_keys_and_shapes() -> None:
    want = {"a.weight": torch.empty(4, 2), "b.bias": torch.empty(4)}
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\), e.g. b.bias"):
        common.check_layout({"a.weight": torch.empty(4, 2)}, want, "x")
    with pytest.raises(CheckpointError, match=r"1 unknown key\(s\), e.g. c"):
        common.check_layout({**want, "c": torch.empty(1)}, want, "x")
    with pytest.raises(CheckpointError, match=r"first a.weight: expected \[4, 2\], found \[4, 3\]"):
        common.check_layout({**want, "a.weight": torch.empty(4, 3)}, want, "x")


def test_wrong_arch_is_refused_before_loading() -> None:
    """MAR fixture weights with the MAR-B architecture: the first mismatching tensor is named with both shapes."""
    container = common.read_container(FIX / "mar" / "checkpoint-last.pth")
    state = container["model_ema"]
    gen, head = mar.component_options(
        {**mar.ARCHS["mar_base"], "encoder_depth": 2, "decoder_depth": 2, "diffloss_d": 2, "buffer_size": 4}
    )
    model = GENERATORS.create(
        "mar", spec=TokenSpec("continuous", (8, 8), dim=16), head="diffloss", head_options=head, num_classes=10, **gen
    )
    with pytest.raises(CheckpointError, match=r"wrong shape, first .*: expected \[.*768.*\], found \[.*64.*\]"):
        common.load_official(model, state, mar.KEYMAP, "mar", mar.extra_tensors(16))
    with pytest.raises(ConfigError, match="unknown MAR --arch 'mar_tiny'; valid: mar_base, mar_large, mar_huge"):
        mar.resolve_arch("mar_tiny", container, "f")
    with pytest.raises(ConfigError, match="does not say its size; pass --arch"):
        mar.resolve_arch(None, container, "f")


def test_rq_codebook_copies_must_agree() -> None:
    state = dict(common.read_container(FIX / "rq" / "stage1" / "model.pt")["state_dict"])
    state["quantizer.codebooks.2.weight"] = state["quantizer.codebooks.2.weight"] + 1
    with pytest.raises(CheckpointError, match="codebooks.2.weight differs .*not a shared codebook"):
        rq.rqvae_to_benchkit(state)


def test_kl_arch_is_read_from_shapes() -> None:
    state = collections.OrderedDict(common.read_container(FIX / "kl16" / "kl16.ckpt")["model"])
    options, source = kl16.tokenizer_options(None, state)
    assert source == "checkpoint shapes"
    assert (options["ch"], options["channel_mult"], options["z_channels"]) == (32, [1, 2], 4)
    with pytest.raises(CheckpointError, match="not an LDM autoencoder"):
        kl16.infer_arch({"x": torch.empty(1)})
