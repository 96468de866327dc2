"""Parameter matching: per-name option tables in presets, backbone counts, and every shipped preset's generators
within 5% of each other."""

from __future__ import annotations

import pytest
import torch

from benchkit.core.config import preset_names, resolve
from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.core.sizes import MATCH_TOLERANCE, apply_sizes, relative_spread
from benchkit.metrics.cost import backbone_params

FLAT = TokenSpec("discrete", (4, 4), 1, vocab_size=16)
STACKED = TokenSpec("discrete", (4, 4), 4, vocab_size=16)


def preset_backbones(preset: str) -> dict[str, int]:
    """backbone_params of every registered generator at the preset's size for it (built on the meta device)."""
    out = {}
    for name in GENERATORS.names():
        cfg = resolve(preset, None, [f'generator.name="{name}"'])
        spec = STACKED if name == "rqtransformer" else FLAT
        with torch.device("meta"):
            model = GENERATORS.create(name, spec=spec, head="ce", num_classes=10, **cfg.generator.options)
        out[name] = backbone_params(model)
    return out


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_matches_backbones_within_tolerance(preset: str) -> None:
    counts = preset_backbones(preset)
    assert set(counts) >= {"ar", "mar", "rqtransformer", "randar"}
    assert relative_spread(counts) <= MATCH_TOLERANCE, counts


def test_tiny_backbones_are_four_blocks_of_width_96() -> None:
    block = 12 * 96 * 96 + 13 * 96  # qkv + proj + mlp weights and biases, two LayerNorms
    counts = preset_backbones("tiny")
    assert counts["ar"] == counts["randar"] == 4 * block + 2 * 96  # plus the final LayerNorm
    assert counts["mar"] == counts["rqtransformer"] == 4 * block + 2 * 2 * 96  # two stacks, two final norms


def test_backbone_leaves_out_embeddings_and_head() -> None:
    model = GENERATORS.create("mar", spec=FLAT, head="ce", num_classes=10)
    total = sum(p.numel() for p in model.parameters())
    expected = sum(p.numel() for p in model.encoder.parameters()) + sum(p.numel() for p in model.decoder.parameters())
    assert backbone_params(model) == expected < total


def test_sizes_pick_the_chosen_name_and_explicit_options_win() -> None:
    raw = {
        "generator": {
            "name": "mar",
            "options": {"width": 64},
            "sizes": {"ar": {"depth": 8}, "mar": {"width": 32, "encoder_depth": 3}},
        }
    }
    apply_sizes(raw)
    assert raw == {"generator": {"name": "mar", "options": {"width": 64, "encoder_depth": 3}}}
    small = resolve("small", None, ['generator.name="mar"', "generator.options.decoder_depth=2"])
    assert small.generator.options["encoder_depth"] == 6 and small.generator.options["decoder_depth"] == 2
    assert resolve("small").generator.options == {"width": 512, "depth": 12, "num_heads": 8}


def test_small_diffusion_loss_uses_the_papers_head_settings() -> None:
    head = resolve("small", None, ['head.name="diffloss"', 'tokenizer.name="kl"']).head.options
    assert head["learn_sigma"] is True and head["clip_x0"] is False and head["sampling_steps"] == 100


def test_bad_sizes_tables_are_refused() -> None:
    with pytest.raises(ConfigError, match="generator.sizes must be a table of option tables"):
        apply_sizes({"generator": {"name": "ar", "sizes": {"ar": 3}}})
    with pytest.raises(ConfigError, match="at least one"):
        relative_spread({})
