"""The contracts of benchkit/core/interfaces.py, checked for every registered component (plugins included) and every
triple the compatibility table accepts: a new component is tested without editing a list here."""

from __future__ import annotations

import inspect

import pytest
import torch

from benchkit.core.compat import compatibility_table, tokenizer_specs
from benchkit.core.config import SampleSettings
from benchkit.core.interfaces import Batch, Generator, Head, Tokenizer, TokenSpec
from benchkit.core.registry import GENERATORS, HEADS, TOKENIZERS

IMAGE = 16  # small images keep every tiny default fast
B = 2
OK = [(r["tokenizer"], r["generator"], r["head"]) for r in compatibility_table(IMAGE) if r["status"] == "ok"]


def _keywords(factory: object) -> set[str]:
    target = factory.__init__ if inspect.isclass(factory) else factory  # type: ignore[misc]
    return {p.name for p in inspect.signature(target).parameters.values() if p.kind == p.KEYWORD_ONLY}


@pytest.mark.parametrize("name", TOKENIZERS.names())
def test_tokenizer_contract(name: str) -> None:
    assert "image_size" in _keywords(TOKENIZERS.get(name).factory)
    tok = TOKENIZERS.create(name, image_size=IMAGE).eval()
    assert isinstance(tok, Tokenizer) and len(tok.specs) >= 1
    x = torch.rand(B, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = tok.loss(x)
    assert loss.loss.ndim == 0 and torch.isfinite(loss.loss)
    tok.calibrate(x, batch_size=B)
    with torch.no_grad():
        assert tok.reconstruct(x).shape == x.shape
        for kind, spec in tok.specs.items():
            tokens = tok.encode(x, kind)
            spec.check(tokens)
            assert tok.decode(tokens, kind).shape == x.shape
            spec.check(tok.tokens_from_cache(tok.encode_for_cache(x, kind), kind))


@pytest.mark.parametrize("name", HEADS.names())
def test_head_contract(name: str) -> None:
    factory = HEADS.get(name).factory
    assert {"spec", "cond_dim"} <= _keywords(factory) and factory.kinds
    for kind in factory.kinds:
        spec = TokenSpec(
            kind, (1, 1), vocab_size=8 if kind == "discrete" else None, dim=4 if kind == "continuous" else None
        )
        head = HEADS.create(name, spec=spec, cond_dim=16).eval()
        assert isinstance(head, Head)
        cond = torch.randn(5, 16)
        target = torch.randint(0, 8, (5,)) if kind == "discrete" else torch.randn(5, 4)
        assert torch.isfinite(head.loss(cond, target, None))
        one = (5,) if kind == "discrete" else (5, 4)
        g = torch.Generator().manual_seed(0)
        assert head.sample(cond, generator=g, diffusion_steps=2).shape == one
        assert head.sample(torch.cat([cond, cond]), cfg=2.0, temperature=0.0, generator=g).shape == one


@pytest.mark.parametrize("tokenizer, generator, head", OK)
def test_generator_contract(tokenizer: str, generator: str, head: str) -> None:
    factory = GENERATORS.get(generator).factory
    assert {"spec", "head", "head_options", "num_classes"} <= _keywords(factory)
    specs = tokenizer_specs(tokenizer, None, IMAGE)
    kind = next(k for k in HEADS.get(head).factory.kinds if k in specs)
    spec = specs[kind]
    assert factory.check_spec(spec) is None
    model = GENERATORS.create(generator, spec=spec, head=head, num_classes=3).eval()
    assert isinstance(model, Generator) and model.num_classes == 3 and model.spec == spec
    labels = torch.tensor([0, 2])
    seen: list[tuple[int, int]] = []
    tokens = model.generate(
        labels,
        SampleSettings(cfg=2.0, diffusion_steps=2),
        generator=torch.Generator().manual_seed(0),
        progress=lambda done, total: seen.append((done, total)),
    )
    spec.check(tokens)
    assert len(tokens) == 2 and seen and seen[-1][0] == seen[-1][1]
    model.train()
    out = model.loss(Batch(tokens, labels))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and "loss" in out.logs
