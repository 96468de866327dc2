"""The paper-size presets build (on the meta device: no memory, no time) with the official parameter counts."""

from __future__ import annotations

import pytest
import torch

from benchkit.core.config import preset_names, resolve
from benchkit.core.errors import IncompatibleComponentsError
from benchkit.metrics.cost import count_params
from benchkit.training.artifacts import build_generator, build_tokenizer
from benchkit.training.checks import check

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
def test_rqtransformer_presets_have_the_official_parameter_counts(name: str) -> None:
    """Both transformers read the frozen RQ-VAE codebook (256-d, a buffer) through a Linear 256 -> W, as the
    official model does, so the parameters are the official ones."""
    gen, combo = _generator(name)
    assert (combo.spec.grid, combo.spec.depth, combo.spec.vocab_size) == ((8, 8), 4, 16384)
    assert tuple(gen.codebook.shape) == (16384, 256)
    assert count_params(gen) / 1e6 == pytest.approx(RQT[name], abs=0.05)


def test_training_copies_the_tokenizer_codebook_into_the_official_embedding(tmp_path) -> None:
    from benchkit.training.generator import train_generator

    cfg = resolve(
        "tiny",
        None,
        [
            f"out_dir={tmp_path}",
            "tokenizer.name=rq",
            "generator.name=rqtransformer",
            "tokenizer_train.steps=2",
            "train.steps=2",
            "train.batch_size=8",
            "data.options={num_train = 64, num_test = 16}",
            'generator.options={code_embedding = "codebook", codebook_dim = 16}',
        ],
    )
    run = train_generator(cfg, progress=False)
    torch.testing.assert_close(run.generator.codebook, run.tokenizer.module.codebook.weight, rtol=0, atol=0)
    assert run.generator.codebook.abs().sum() > 0
    wrong = resolve(
        "tiny",
        None,
        [
            f"out_dir={tmp_path / 'w'}",
            "tokenizer.name=rq",
            "generator.name=rqtransformer",
            "tokenizer_train.steps=2",
            "train.steps=2",
            "data.options={num_train = 64, num_test = 16}",
            'generator.options={code_embedding = "codebook", codebook_dim = 8}',
        ],
    )
    with pytest.raises(IncompatibleComponentsError, match="codebook_dim"):
        train_generator(wrong, progress=False)


def test_paper_presets_are_shipped_and_their_tokenizers_build() -> None:
    assert set(MAR) | set(RQT) | {"ar-l"} <= set(preset_names())
    for name, grid in (("mar-b", (16, 16)), ("rqt-480m", (8, 8))):
        cfg = resolve(name)
        kind = check(cfg, include_eval=False).kind
        with torch.device("meta"):
            tok = build_tokenizer(cfg, torch.device("meta"))
        assert tok.specs[kind].grid == grid and cfg.train.precision == "bf16" and cfg.eval.num_samples == 50000


@pytest.mark.parametrize("name", sorted({*MAR, *RQT, "ar-l"}))
def test_paper_presets_score_by_the_adm_protocol(name: str, tmp_path) -> None:
    """Every paper preset scores 50,000 class-balanced samples by ADM's evaluator against ADM's ImageNet batch, and a
    missing batch file is one line naming it, before any compute."""
    from benchkit.core.errors import ConfigError
    from benchkit.metrics.features import check_protocol
    from benchkit.sampling.generate import balanced_labels

    ev = resolve(name).eval
    assert (ev.protocol, ev.reference_batch, ev.reference_stats) == ("adm", "VIRTUAL_imagenet256_labeled.npz", None)
    assert ev.num_samples == 50000 and ev.features == "inception"
    assert torch.bincount(balanced_labels(ev.num_samples, IMAGENET_CLASSES)).tolist() == [50] * IMAGENET_CLASSES
    missing = resolve(name, None, [f'eval.reference_batch="{tmp_path / "VIRTUAL_imagenet256_labeled.npz"}"']).eval
    with pytest.raises(ConfigError, match="VIRTUAL_imagenet256_labeled.npz") as e:
        check_protocol(missing)
    assert "\n" not in str(e.value)
