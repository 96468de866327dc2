"""The paper-size presets build (on the meta device: no memory, no time) with the official parameter counts."""

from __future__ import annotations

import pytest
import torch

from benchkit.config import preset_names, resolve
from benchkit.metrics.cost import count_params
from benchkit.pipeline import build_generator, build_tokenizer, check

IMAGENET_CLASSES = 1000
# official parameter counts in millions (MAR README / meta-device counts of the released configs)
MAR = {"mar-b": 207.92, "mar-l": 478.33, "mar-h": 942.40}
RQT = {"rqt-480m": 480.9, "rqt-821m": 820.9, "rqt-1388m": 1387.5}


def _generator(name: str) -> tuple[torch.nn.Module, object]:
    cfg = resolve(name)
    combo = check(cfg, include_eval=False)
    with torch.device("meta"):
        return build_generator(cfg, combo, IMAGENET_CLASSES, torch.device("meta")), combo


@pytest.mark.parametrize("name", sorted(MAR))
def test_mar_presets_have_the_official_parameter_counts(name: str) -> None:
    gen, combo = _generator(name)
    assert combo.spec.grid == (16, 16) and combo.spec.dim == 16  # KL-16 latents of ImageNet 256
    assert count_params(gen) / 1e6 == pytest.approx(MAR[name], abs=0.01)


def test_ar_baseline_matches_mar_l_in_size() -> None:
    ar, _ = _generator("ar-l")
    assert len(ar.transformer.blocks) == 32  # double depth: MAR-L's 16 encoder + 16 decoder blocks
    assert count_params(ar) / 1e6 == pytest.approx(MAR["mar-l"], rel=0.005)


@pytest.mark.parametrize("name", sorted(RQT))
def test_rqtransformer_presets_match_official_up_to_the_code_embeddings(name: str) -> None:
    """benchkit learns a K x W code table for each transformer where the official model reads the frozen RQ-VAE
    codebook (256-d) through a Linear 256 -> W: swapping one for the other gives the official count."""
    gen, combo = _generator(name)
    K, W = combo.spec.vocab_size, resolve(name).generator.options["width"]
    assert (combo.spec.grid, combo.spec.depth, K) == ((8, 8), 4, 16384)
    learned_tables, official_linears = 2 * K * W, 2 * (256 * W + W)
    assert (count_params(gen) - learned_tables + official_linears) / 1e6 == pytest.approx(RQT[name], abs=0.05)


def test_paper_presets_are_shipped_and_their_tokenizers_build() -> None:
    assert set(MAR) | set(RQT) | {"ar-l"} <= set(preset_names())
    for name, grid in (("mar-b", (16, 16)), ("rqt-480m", (8, 8))):
        cfg = resolve(name)
        kind = check(cfg, include_eval=False).kind
        with torch.device("meta"):
            tok = build_tokenizer(cfg, torch.device("meta"))
        assert tok.specs[kind].grid == grid and cfg.train.precision == "bf16" and cfg.eval.num_samples == 50000
