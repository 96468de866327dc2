"""Contract tests of the generators (ar, mar, rqtransformer, randar) with the real heads, plus the shared schedules and
the transformer KV cache. Random tokens stand in for a tokenizer: generators only know the TokenSpec."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from benchkit.core.config import SampleSettings
from benchkit.core.errors import ConfigError, IncompatibleComponentsError
from benchkit.core.interfaces import Batch, Generator, TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.nn.schedules import (
    tokens_to_keep_masked,
)
from benchkit.nn.transformer import Transformer

NUM_CLASSES = 3
GRID = (2, 3)  # non-square on purpose: catches h/w mix-ups
SPECS = {
    "discrete-d1": TokenSpec("discrete", GRID, 1, vocab_size=16),
    "discrete-d4": TokenSpec("discrete", GRID, 4, vocab_size=16),
    "continuous-d1": TokenSpec("continuous", GRID, 1, dim=4),
    "continuous-d4": TokenSpec("continuous", GRID, 4, dim=4),
}
SMALL: dict[str, dict[str, Any]] = {  # smaller than tiny so every test stays well under a second
    "ar": {"width": 32, "depth": 2, "num_heads": 2},
    "mar": {"width": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "buffer_size": 2, "steps": 4},
    "rqtransformer": {"width": 32, "spatial_depth": 2, "depth_depth": 1, "num_heads": 2},
    "randar": {"width": 32, "depth": 2, "num_heads": 2},
}
HEAD_OPTIONS = {"ce": {}, "diffloss": {"width": 32, "depth": 1, "batch_mul": 1, "sampling_steps": 3}}
COMBOS = [  # (generator, head, token layout): every valid combination
    ("ar", "ce", "discrete-d1"),
    ("ar", "ce", "discrete-d4"),  # flattened h*w*D sequence: the long-sequence baseline
    ("ar", "diffloss", "continuous-d1"),
    ("ar", "diffloss", "continuous-d4"),
    ("mar", "ce", "discrete-d1"),
    ("mar", "diffloss", "continuous-d1"),
    ("rqtransformer", "ce", "discrete-d4"),
    ("rqtransformer", "diffloss", "continuous-d4"),
    ("randar", "ce", "discrete-d1"),
    ("randar", "diffloss", "continuous-d1"),
]
IDS = [f"{g}-{h}-{s}" for g, h, s in COMBOS]


def build(name: str, head: str, layout: str, **options: Any) -> Any:
    torch.manual_seed(0)
    opts = {**SMALL[name], **options}
    return GENERATORS.create(
        name, spec=SPECS[layout], head=head, head_options=HEAD_OPTIONS[head], num_classes=NUM_CLASSES, **opts
    )


def random_batch(spec: TokenSpec, B: int = 4, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    if spec.kind == "discrete":
        tokens = torch.randint(0, int(spec.vocab_size or 0), (B, *spec.token_shape), generator=g)
    else:
        tokens = torch.randn(B, *spec.token_shape, generator=g)
    return Batch(tokens, torch.randint(0, NUM_CLASSES, (B,), generator=g))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class HeadSpy:
    """Wraps head.sample to record the rows and guidance scale of every call."""

    def __init__(self, model: Any) -> None:
        self.calls: list[tuple[int, float]] = []
        self._sample = model.head.sample
        model.head.sample = self

    def __call__(self, cond: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.calls.append((cond.shape[0], kw["cfg"]))
        return self._sample(cond, **kw)


# --------------------------------------------------------------------------------------- contract, every combo


def test_every_registered_generator_is_under_contract() -> None:
    """A new generator gets the contract tests below only once it has a SMALL size and its valid COMBOS."""
    assert set(GENERATORS.names()) == set(SMALL) == {g for g, _, _ in COMBOS}


@pytest.mark.parametrize(("name", "head", "layout"), COMBOS, ids=IDS)
def test_loss_finite_and_gradients_reach_every_parameter(name: str, head: str, layout: str) -> None:
    model = build(name, head, layout)
    assert isinstance(model, Generator)
    if head == "diffloss":
        # the Diffusion Loss MLP starts with zero adaLN/final layers (MAR init), which by design sends zero
        # gradient to its condition on the very first step; perturb them so the test sees the whole graph
        with torch.no_grad():
            for p in model.head.parameters():
                if not p.any():
                    p.normal_(std=0.02)
    model.train()
    spec = SPECS[layout]
    losses = []
    for seed in (1, 2, 3):  # MAR: a mask ratio of 1 on one batch would hide the token embedding
        torch.manual_seed(seed)
        out = model.loss(random_batch(spec, seed=seed))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert out.logs["loss"] == pytest.approx(float(out.loss.detach()))
        out.loss.backward()
        losses.append(out.logs["loss"])
    if head == "ce":  # near-uniform logits at init
        assert all(abs(v - math.log(16)) < 0.5 for v in losses)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize(("name", "head", "layout"), COMBOS, ids=IDS)
def test_generate_shape_dtype_range_and_seeding(name: str, head: str, layout: str) -> None:
    model = build(name, head, layout).eval()
    spec = SPECS[layout]
    labels = torch.tensor([0, 2, NUM_CLASSES])  # the null class is allowed: unconditional samples
    a = model.generate(labels, generator=seeded(0))
    b = model.generate(labels, generator=seeded(0))
    c = model.generate(labels, generator=seeded(1))
    assert a.shape == (3, *spec.token_shape) and a.dtype == spec.dtype
    spec.check(a)  # shape, dtype and id range
    assert torch.isfinite(a.float()).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(("name", "head", "layout"), COMBOS, ids=IDS)
@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_cfg_doubles_rows_and_follows_schedule(name: str, head: str, layout: str, schedule: str) -> None:
    model = build(name, head, layout).eval()
    spy = HeadSpy(model)
    labels = torch.tensor([0, 1])
    out = model.generate(labels, SampleSettings(cfg=2.0, cfg_schedule=schedule), generator=seeded(0))
    SPECS[layout].check(out)
    rows = [r for r, _ in spy.calls]
    scales = [w for _, w in spy.calls]
    assert all(r % 4 == 0 for r in rows)  # 2N rows: conditional then unconditional, N a multiple of B=2
    if schedule == "constant":
        assert scales == [2.0] * len(scales)
    else:  # ramps from just above 1 to exactly cfg with the fraction of tokens generated
        assert scales == sorted(scales) and 1.0 < scales[0] < 2.0 and scales[-1] == pytest.approx(2.0)
    # without guidance the head sees N rows and cfg 1
    spy.calls.clear()
    model.generate(labels, generator=seeded(0))
    draws = SPECS[layout].positions * SPECS[layout].depth  # one head row per token of each sample
    assert all(w == 1.0 for _, w in spy.calls) and sum(r for r, _ in spy.calls) == 2 * draws


def test_guidance_changes_samples() -> None:
    model = build("ar", "ce", "discrete-d1").eval()
    with torch.no_grad():  # make class embeddings distinct enough that guidance visibly matters
        model.class_emb.weight.normal_(std=1.0)
    labels = torch.tensor([0, 1, 2, 0])
    plain = model.generate(labels, generator=seeded(0))
    guided = model.generate(labels, SampleSettings(cfg=4.0), generator=seeded(0))
    assert not torch.equal(plain, guided)


# --------------------------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize(
    ("name", "head", "layout"),
    [c for c in COMBOS if c[0] in ("ar", "rqtransformer", "randar")],
    ids=[i for c, i in zip(COMBOS, IDS) if c[0] in ("ar", "rqtransformer", "randar")],
)
@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_kv_cache_matches_uncached_path(name: str, head: str, layout: str, cfg: float) -> None:
    model = build(name, head, layout).eval()
    labels = torch.tensor([0, 1, 2])
    assert model.use_kv_cache
    cached = model.generate(labels, SampleSettings(cfg=cfg, cfg_schedule="linear"), generator=seeded(3))
    model.use_kv_cache = False
    full = model.generate(labels, SampleSettings(cfg=cfg, cfg_schedule="linear"), generator=seeded(3))
    if SPECS[layout].kind == "discrete":
        assert torch.equal(cached, full)  # token for token
    else:  # same draws; float sums in another order differ in the last bits
        assert torch.allclose(cached, full, atol=1e-4, rtol=1e-4), (cached - full).abs().max()


@pytest.mark.parametrize(("head", "layout"), [("ce", "discrete-d1"), ("diffloss", "continuous-d1")])
def test_ar_with_several_class_slots_matches_its_uncached_path_and_teacher_forcing(head: str, layout: str) -> None:
    """``class_tokens = 3`` (MAR's buffer of class slots in front of an AR sequence): the KV-cached sampler equals
    the recomputing one, the loss sees one condition per token, and token 0's condition depends on the class."""
    model = build("ar", head, layout, class_tokens=3).eval()
    spec = SPECS[layout]
    assert model.pos_emb.shape[1] == spec.positions + 2
    batch = random_batch(spec, B=3)
    z = model.forward(model.as_sequence(batch.tokens, model.seq_len), batch.labels)
    assert z.shape == (3, spec.positions, 32)
    other = model.forward(model.as_sequence(batch.tokens, model.seq_len), (batch.labels + 1) % NUM_CLASSES)
    assert not torch.allclose(z[:, 0], other[:, 0])
    labels = torch.tensor([0, 1, 2])
    cached = model.generate(labels, SampleSettings(cfg=2.0, cfg_schedule="linear"), generator=seeded(3))
    model.use_kv_cache = False
    full = model.generate(labels, SampleSettings(cfg=2.0, cfg_schedule="linear"), generator=seeded(3))
    assert torch.equal(cached, full) if spec.kind == "discrete" else torch.allclose(cached, full, atol=1e-4)
    with pytest.raises(ConfigError, match="generator.ar: class_tokens must be >= 1, got 0"):
        build("ar", head, layout, class_tokens=0)


def test_transformer_cache_matches_full_causal_pass() -> None:
    torch.manual_seed(0)
    net = Transformer(32, 2, 4).eval()
    x = torch.randn(3, 7, 32)
    full = net(x, causal=True)
    cache = net.new_cache(3, 7, x)
    parts = [net(x[:, :3], causal=True, cache=cache), net(x[:, 3:4], causal=True, cache=cache)]
    parts.append(net(x[:, 4:], causal=True, cache=cache))  # a chunk after a prefix: the explicit-mask path
    assert cache.length == 7
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(net(x)[:, 0], full[:, 0])  # bidirectional differs from causal


# ------------------------------------------------------------------------------------------- MAR specifics


def test_mar_one_token_per_step_when_steps_equal_length() -> None:
    model = build("mar", "ce", "discrete-d1").eval()
    L = SPECS["discrete-d1"].positions
    spy = HeadSpy(model)
    done: list[tuple[int, int]] = []
    model.generate(
        torch.tensor([0, 1]), SampleSettings(steps=L), generator=seeded(0), progress=lambda i, n: done.append((i, n))
    )
    assert [r for r, _ in spy.calls] == [2] * L  # B=2 rows, one position each, L steps
    assert done[-1] == (L, L) and len(done) == L


def test_mar_fills_each_position_once_per_schedule() -> None:
    model = build("mar", "diffloss", "continuous-d1").eval()
    spy = HeadSpy(model)
    L, K = SPECS["continuous-d1"].positions, 3
    out = model.generate(torch.tensor([0, 1]), SampleSettings(steps=K), generator=seeded(0))
    expected = [L - tokens_to_keep_masked(L, 0, K)]
    expected += [tokens_to_keep_masked(L, k - 1, K) - tokens_to_keep_masked(L, k, K) for k in range(1, K)]
    assert [r // 2 for r, _ in spy.calls] == expected
    assert (out.abs().sum(-1) > 0).all()  # every position was written (the buffer starts at zero)


def test_mar_step_bounds() -> None:
    model = build("mar", "ce", "discrete-d1").eval()
    with pytest.raises(ConfigError, match=r"steps must be in \[1, 6\]"):
        model.generate(torch.tensor([0]), SampleSettings(steps=7))
    spy = HeadSpy(model)
    model.generate(torch.tensor([0]))  # default steps (4) capped at h*w
    assert len(spy.calls) == 4


# ------------------------------------------------------------------------------------ refusals and errors


def test_check_spec_refusals() -> None:
    ar, mar, rq = (GENERATORS.get(n).factory for n in ("ar", "mar", "rqtransformer"))
    assert all(ar.check_spec(s) is None for s in SPECS.values())
    assert rq.check_spec(SPECS["discrete-d1"]) == (
        "rqtransformer needs stacked tokens (depth > 1), e.g. from the rq tokenizer"
    )
    assert rq.check_spec(SPECS["continuous-d4"]) is None
    reason = mar.check_spec(SPECS["discrete-d4"])
    assert reason is not None and "depth 1" in reason and "\n" not in reason
    with pytest.raises(IncompatibleComponentsError, match="stacked tokens"):
        build("rqtransformer", "ce", "discrete-d1")
    with pytest.raises(IncompatibleComponentsError, match="ce"):
        build("ar", "ce", "continuous-d1")  # the head refuses the token kind


@pytest.mark.parametrize("name", ["ar", "mar", "rqtransformer", "randar"])
def test_sampling_arguments_are_checked(name: str) -> None:
    """A setting's values are checked once, when the SampleSettings is made; ``generate`` checks what depends on the
    model (labels, steps) before any compute, and takes nothing but a SampleSettings."""
    layout = "discrete-d4" if name == "rqtransformer" else "discrete-d1"
    model = build(name, "ce", layout)
    labels = torch.tensor([0])
    with pytest.raises(ConfigError, match="steps must be"):
        model.generate(labels, SampleSettings(steps=0))
    with pytest.raises(ConfigError, match="cfg must be >= 0"):
        model.generate(labels, SampleSettings(cfg=-1.0))
    with pytest.raises(ConfigError, match=r"temperature must be >= 0 \(0 = greedy\)"):
        model.generate(labels, SampleSettings(temperature=-0.1))
    with pytest.raises(ConfigError, match="diffusion_steps must be"):
        model.generate(labels, SampleSettings(diffusion_steps=0))
    with pytest.raises(ConfigError, match="valid: constant, linear"):
        model.generate(labels, SampleSettings(cfg_schedule="cosine"))
    with pytest.raises(ConfigError, match=r"labels must be in \[0, 3\]"):
        model.generate(torch.tensor([4]))
    with pytest.raises(ConfigError, match=r"labels must be a long tensor \[B\]"):
        model.generate(torch.tensor([0.0]))
    with pytest.raises(TypeError, match="settings must be a SampleSettings or None, got dict"):
        model.generate(labels, {"steps": 1})
    if name != "mar":
        with pytest.raises(ConfigError, match="steps must be None or 6"):
            model.generate(labels, SampleSettings(steps=5))


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        GENERATORS.create("ar", spec=SPECS["discrete-d1"], head="ce", num_classes=2, width=30, num_heads=4)
    with pytest.raises(ConfigError, match="valid:"):
        GENERATORS.create("mar", spec=SPECS["discrete-d1"], head="ce", num_classes=2, encoder_layers=2)


def test_tiny_defaults_are_a_few_hundred_thousand_parameters() -> None:
    spec = TokenSpec("discrete", (8, 8), 1, vocab_size=256)
    spec4 = TokenSpec("discrete", (8, 8), 4, vocab_size=256)
    for name, s in (("ar", spec), ("mar", spec), ("rqtransformer", spec4)):
        model = GENERATORS.create(name, spec=s, head="ce", num_classes=10)
        n = sum(p.numel() for p in model.parameters())
        assert 0.2e6 < n < 0.8e6, (name, n)  # tiny: trains in about a minute on 2 CPU cores


def test_ar_learns_a_fixed_sequence() -> None:
    model = build("ar", "ce", "discrete-d1", label_drop=0.0)
    batch = random_batch(SPECS["discrete-d1"], B=2)
    first = model.loss(batch).logs["loss"]
    for _ in range(40):  # plain SGD by hand: torch.optim's first step costs a second of imports
        model.zero_grad()
        model.loss(batch).loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    assert model.loss(batch).logs["loss"] < 0.3 * first


# ------------------------------------------------------------------------------------ sampling settings


def test_diffusion_steps_are_passed_to_the_head_per_call() -> None:
    from benchkit.sampling.generate import SampleSettings, generate_tokens

    model = build("mar", "diffloss", "continuous-d1").eval()
    seen: list[int | None] = []
    original = model.head.sample
    model.head.sample = lambda *a, **kw: (seen.append(kw["diffusion_steps"]), original(*a, **kw))[1]
    generate_tokens(model, torch.tensor([0, 1]), SampleSettings(steps=2, diffusion_steps=7), seed=0, batch_size=2)
    generate_tokens(model, torch.tensor([0, 1]), SampleSettings(steps=2), seed=0, batch_size=2)
    assert seen == [7, 7, None, None]  # None: the head's own sampling_steps
    assert model.head.cfg.sampling_steps == 3


@pytest.mark.parametrize("layout", ["discrete-d1", "discrete-d4"])
def test_ce_temperature_zero_is_greedy_end_to_end(layout: str) -> None:
    """Temperature 0 through ``generate``: greedy decoding, so the seed no longer matters; temperature 1 differs."""
    model = build("ar", "ce", layout).eval()
    labels = torch.tensor([0, 1, 2])
    a = model.generate(labels, SampleSettings(temperature=0.0), generator=torch.Generator().manual_seed(0))
    b = model.generate(labels, SampleSettings(temperature=0.0), generator=torch.Generator().manual_seed(1))
    c = model.generate(labels, SampleSettings(temperature=1.0), generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_eval_settings_resolve_defaults_and_drop_repeats() -> None:
    from types import SimpleNamespace

    from benchkit.evaluation.evaluate import resolve_settings
    from benchkit.sampling.generate import SampleSettings

    run: Any = SimpleNamespace(generator=build("mar", "diffloss", "continuous-d1"))
    base = SampleSettings()
    out = resolve_settings(
        run, [base, SampleSettings(steps=4), SampleSettings(diffusion_steps=3), SampleSettings(steps=2, cfg=2.0)]
    )
    assert out == [SampleSettings(steps=4, diffusion_steps=3), SampleSettings(steps=2, cfg=2.0, diffusion_steps=3)]
    ar: Any = SimpleNamespace(generator=build("ar", "ce", "discrete-d1"))
    assert resolve_settings(ar, [base, SampleSettings(cfg=2.0)]) == [base, SampleSettings(cfg=2.0)]
