"""The component options added to hold official weights: the ldm backbone of the conv tokenizers and the
RQ-Transformer's codebook embedding path work as ordinary benchkit components (train, sample, refuse bad values)."""

from __future__ import annotations

import pytest
import torch

from benchkit.core.config import SampleSettings
from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.core.registry import GENERATORS, TOKENIZERS

LDM = {"backbone": "ldm", "ch": 32, "channel_mult": (1, 1), "num_res_blocks": 1, "attn_levels": (1,)}


@pytest.mark.parametrize("name,extra", [("kl", {}), ("rq", {"code_dim": 8}), ("vq", {"code_dim": 8})])
def test_ldm_backbone_trains(name: str, extra: dict) -> None:
    torch.manual_seed(0)
    tok = TOKENIZERS.create(name, image_size=16, decoder_attn_levels=(0,), **LDM, **extra)
    assert hasattr(tok.encoder.down[1], "attn") and len(tok.encoder.down[1].attn) == 1
    assert len(tok.decoder.up[0].block) == 2 and len(tok.decoder.up[0].attn) == 2  # num_res_blocks + 1
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    out = tok.loss(images)
    out.loss.backward()
    assert torch.isfinite(out.loss) and tok.quant_conv.weight.grad is not None
    kind = "continuous" if name == "kl" else "discrete"
    assert tok.decode(tok.encode(images, kind), kind).shape == images.shape


@pytest.mark.parametrize(
    "options,pattern",
    [
        ({"backbone": "ldm", "ch": 16}, "multiple of 32"),
        ({"backbone": "taming"}, "backbone = 'taming' is not valid; valid: 'benchkit', 'ldm'"),
        ({"attn_levels": (5,)}, r"attn_levels must hold levels in 0..2"),
    ],
)
def test_backbone_options_are_checked(options: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        TOKENIZERS.make_config("kl", options)


def test_codebook_embedding_path_samples_the_same_with_and_without_cache() -> None:
    spec = TokenSpec("discrete", (2, 2), depth=3, vocab_size=16)
    torch.manual_seed(0)
    gen = GENERATORS.create(
        "rqtransformer",
        spec=spec,
        head="ce",
        num_classes=3,
        width=32,
        num_heads=2,
        code_embedding="codebook",
        codebook_dim=8,
    ).eval()
    gen.codebook.normal_()
    assert isinstance(gen.spatial.norm, torch.nn.Identity) and gen.depth.norm.eps == 1e-5
    labels = torch.tensor([0, 2])
    out = [gen.generate(labels, SampleSettings(cfg=2.0), generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    gen.use_kv_cache = False
    out.append(gen.generate(labels, SampleSettings(cfg=2.0), generator=torch.Generator().manual_seed(1)))
    assert out[0].shape == (2, 2, 2, 3) and torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    loss = gen.loss(Batch(out[0], labels)).loss
    assert torch.isfinite(loss)


def test_codebook_embedding_needs_discrete_tokens_and_a_width() -> None:
    with pytest.raises(ConfigError, match="codebook_dim must be > 0 exactly when"):
        GENERATORS.make_config("rqtransformer", {"code_embedding": "codebook"})
    with pytest.raises(ConfigError, match="needs discrete tokens"):
        GENERATORS.create(
            "rqtransformer",
            spec=TokenSpec("continuous", (2, 2), depth=2, dim=4),
            head="diffloss",
            num_classes=2,
            code_embedding="codebook",
            codebook_dim=4,
        )
