"""The released full-size layouts are covered: built at each official size on the meta device, benchkit's
component maps to every official key with the same shape and back (full_size_keys_*.json, no weights needed),
and the parameter counts are the published ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS, TOKENIZERS
from benchkit.importers import common, kl16, mar, rq

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "official"


def official(file: str, name: str) -> dict[str, torch.Tensor]:
    keys = json.loads((FIX / file).read_text())["models"][name]
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


def millions(state: Mapping[str, torch.Tensor]) -> float:
    return round(sum(t.numel() for t in state.values()) / 1e6, 1)


def params(module: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 1)


def covered(
    module: torch.nn.Module, off: dict[str, torch.Tensor], keymap: common.KeyMap, extra: Mapping[str, torch.Tensor]
) -> None:
    """Both directions: benchkit -> official gives exactly the official keys and shapes, and official -> benchkit
    (plus the benchkit-only tensors) exactly benchkit's."""
    common.check_layout(keymap.to_official(module.state_dict()), off, "benchkit -> official")
    common.check_layout({**keymap.to_benchkit(off), **extra}, module.state_dict(), "official -> benchkit")


@pytest.mark.parametrize("name,count", [("mar_base", 207.9), ("mar_large", 478.3), ("mar_huge", 942.4)])
def test_mar_full_size(name: str, count: float) -> None:
    gen, head = mar.component_options(mar.ARCHS[name])
    with torch.device("meta"):
        model = GENERATORS.create(
            "mar",
            spec=TokenSpec("continuous", (16, 16), dim=16),
            head="diffloss",
            head_options=head,
            num_classes=1000,
            **gen,
        )
    off = official("full_size_keys_mar.json", name)
    covered(model, off, mar.KEYMAP, mar.extra_tensors(16))
    assert millions(off) == params(model) == count


def test_kl16_full_size() -> None:
    off = official("full_size_keys_mar.json", "kl16_vae")
    options, _ = kl16.tokenizer_options("kl16", off)
    assert kl16.infer_arch(off) == {**kl16.ARCHS["kl16"]}  # the shapes give the released architecture back
    with torch.device("meta"):
        tok = TOKENIZERS.create("kl", image_size=256, **options)
    covered(tok, off, kl16.KEYMAP, kl16.extra_tensors())
    assert millions(off) == params(tok) == 66.5
    assert tok.specs["continuous"].grid == (16, 16) and tok.specs["continuous"].dim == 16


@pytest.mark.parametrize("name", ["in256-rqvae-8x8x4", "ffhq256-rqvae-8x8x4"])
def test_rqvae_full_size(name: str) -> None:
    options, size = rq.rqvae_options(rq.RQVAE_ARCHS[name])
    with torch.device("meta"):
        tok = TOKENIZERS.create("rq", image_size=size, **options)
    off = official("full_size_keys_rq.json", name)
    covered(tok, off, rq.rqvae_keymap(options["depth"]), {"scale": torch.empty((), device="meta")})
    assert tok.specs["discrete"].grid == (8, 8) and tok.specs["discrete"].depth == 4
    if name.startswith("in256"):
        # 133.8M counts every stored tensor: the 4 copies of the padded codebook and of its EMA buffers
        assert millions(off) == 133.8


@pytest.mark.parametrize(
    "name,count", [("in256-480M", 480.9), ("in256-800M", 820.9), ("in256-1400M", 1387.5), ("in256-3800M", 3822.5)]
)
def test_rqtransformer_full_size(name: str, count: float) -> None:
    gen, head, classes = rq.rqt_options(rq.RQT_ARCHS[name])
    spec = TokenSpec("discrete", (8, 8), depth=4, vocab_size=16384)
    with torch.device("meta"):
        model = GENERATORS.create("rqtransformer", spec=spec, head="ce", head_options=head, num_classes=classes, **gen)
    off = official("full_size_keys_rq.json", name)
    covered(model, off, rq.RQT_KEYMAP, {"codebook": torch.empty(16384, 256, device="meta")})
    # benchkit adds one null-class row (width values) for CFG; the codebook copy is a buffer
    extra = sum(p.numel() for p in model.parameters()) - sum(t.numel() for t in off.values())
    assert extra == gen["width"]
    assert millions(off) == params(model) == count
