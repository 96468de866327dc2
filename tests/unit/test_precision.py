"""Mixed precision, gradient checkpointing and the other speed switches of the training loop."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

from benchkit.core.config import TrainConfig, resolve
from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.core.precision import autocast, check_precision, grad_scaler
from benchkit.core.registry import GENERATORS
from benchkit.nn.transformer import Transformer, set_grad_checkpointing
from benchkit.training.trainer import fit

SPEC = TokenSpec("discrete", (4, 4), 1, vocab_size=32)
# a learnable toy task: the tokens of an image are its class index repeated (plus noise tokens)
N = 256
LABELS = torch.arange(N) % 4
TOKENS = torch.where(
    torch.rand(N, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.8,
    LABELS.view(-1, 1, 1).expand(-1, 4, 4),
    torch.randint(0, 32, (N, 4, 4)),
)
# bf16 keeps 8 mantissa bits: over this 60-step run the loss curve stays within 1% of fp32's (measured: 0.07%)
BF16_TOLERANCE = 0.01


def _train(tmp: Path, precision: str, steps: int = 60, **kw: Any) -> tuple[list[float], torch.nn.Module]:
    torch.manual_seed(0)
    gen = GENERATORS.create("ar", spec=SPEC, head="ce", num_classes=4, width=32, depth=2, num_heads=2)
    cfg = TrainConfig(steps=steps, batch_size=32, lr=3e-3, warmup_steps=5, log_every=5, precision=precision, **kw)
    fit(
        gen,
        lambda m, b: m.loss(b),
        lambda idx: Batch(TOKENS[idx], LABELS[idx]),
        N,
        cfg,
        tmp,
        seed=0,
        fingerprint=precision,
        show_progress=False,
    )
    rows = list(csv.DictReader(open(tmp / "log.csv")))
    return [float(r["loss"]) for r in rows], gen


def test_bf16_loss_tracks_fp32(tmp_path: Path) -> None:
    fp32, _ = _train(tmp_path / "fp32", "fp32")
    bf16, _ = _train(tmp_path / "bf16", "bf16")
    assert fp32[-1] < 0.7 * fp32[0]  # the task is learned, so the comparison means something
    rel = [abs(a - b) / a for a, b in zip(fp32, bf16, strict=True)]
    assert max(rel) < BF16_TOLERANCE, rel
    assert fp32 != bf16  # bf16 really ran: the curves are close, not identical


def test_fp16_uses_a_scaler_that_is_checkpointed(tmp_path: Path) -> None:
    losses, gen = _train(tmp_path / "fp16", "fp16", steps=20, checkpoint_every=10)
    assert all(torch.isfinite(p).all() for p in gen.parameters())
    assert losses[-1] < losses[0]
    import json

    meta = json.loads((tmp_path / "fp16" / "checkpoint.json").read_text())
    assert meta["scaler"]["scale"] > 0  # the scale survives a resume
    assert grad_scaler("bf16", torch.device("cpu")) is None and grad_scaler("fp32", torch.device("cpu")) is None


def test_autocast_runs_matmuls_in_the_lower_precision() -> None:
    a = torch.randn(4, 4)
    with autocast("bf16", torch.device("cpu")):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("fp32", torch.device("cpu")):
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; valid: fp32, bf16, fp16"):
        check_precision("fp8")
    with pytest.raises(ConfigError, match="train.precision"):
        resolve("tiny", overrides=["train.precision=fp8"])


def test_checkpointed_blocks_give_the_same_gradients() -> None:
    torch.manual_seed(0)
    net = Transformer(16, 3, 2, dropout=0.1).train()  # dropout: the recomputation must replay the same masks
    x = torch.randn(2, 5, 16)
    grads = []
    for on in (False, True):
        assert set_grad_checkpointing(net, on) == 1
        net.zero_grad()
        torch.manual_seed(1)
        out = net(x, causal=True)
        (out**2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_checkpointed_diffusion_head_gives_the_same_gradients() -> None:
    from benchkit.core.registry import HEADS

    torch.manual_seed(0)
    head = HEADS.create(
        "diffloss", spec=TokenSpec("continuous", (1, 1), dim=4), cond_dim=8, width=16, depth=3, learn_sigma=True
    ).train()
    with torch.no_grad():  # non-zero adaLN and output layers, so every block's gradient is non-trivial
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cond, target = torch.randn(6, 8, requires_grad=True), torch.randn(6, 4)
    grads, losses = [], []
    for on in (False, True):
        assert set_grad_checkpointing(head, on) == 1  # the denoiser's residual blocks
        head.zero_grad()
        cond.grad = None
        torch.manual_seed(1)  # the same timesteps and noise
        loss = head.loss(cond, target)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({"cond": cond.grad.clone(), **{n: p.grad.clone() for n, p in head.named_parameters()}})
    assert losses[0] == losses[1]
    for name in grads[0]:
        assert grads[0][name].abs().sum() > 0, name
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_plan_counts_the_checkpointed_diffusion_head(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchkit.training import plan
    from benchkit.training.artifacts import build_generator
    from benchkit.training.checks import check

    cfg = resolve(
        "tiny", overrides=["tokenizer.name=kl", "generator.name=mar", "head.name=diffloss", "head.options.depth=6"]
    )
    with torch.device("meta"):
        gen = build_generator(cfg, check(cfg, include_eval=False), 10, torch.device("meta")).train()
    spec = check(cfg, include_eval=False).spec
    monkeypatch.setattr(plan, "DRAWS", 1)  # the same mask-ratio draw for the three measurements
    plain = plan.measure_step(gen, spec, torch.float32, checkpointed=False)[1]
    both = plan.measure_step(gen, spec, torch.float32, checkpointed=True)[1]

    def transformers_only(model: torch.nn.Module, enabled: bool) -> int:  # the switch before it reached the head
        found = [m for m in model.modules() if isinstance(m, Transformer)]
        for m in found:
            m.grad_checkpoint = enabled
        return len(found)

    monkeypatch.setattr(plan, "set_grad_checkpointing", transformers_only)
    blocks_only = plan.measure_step(gen, spec, torch.float32, checkpointed=True)[1]
    assert both < 0.8 * blocks_only < plain  # a 6-block head holds most of MAR's activations at tiny


def test_speed_switches_leave_the_fingerprint_alone_and_precision_changes_it() -> None:
    from benchkit.training.artifacts import run_fingerprint

    base = resolve("tiny")
    same = resolve("tiny", overrides=["train.grad_checkpoint=true", "train.compile=true", "train.precision=fp32"])
    assert run_fingerprint(base) == run_fingerprint(same)
    assert run_fingerprint(base) != run_fingerprint(resolve("tiny", overrides=["train.precision=bf16"]))


def test_grad_checkpoint_switch_trains_like_plain(tmp_path: Path) -> None:
    plain, a = _train(tmp_path / "a", "fp32", steps=10)
    ckpt, b = _train(tmp_path / "b", "fp32", steps=10, grad_checkpoint=True)
    assert plain == pytest.approx(ckpt, rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_every_generator_and_head_trains_and_samples_under_bf16() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_generators import COMBOS, SPECS, build, random_batch

    from benchkit.sampling.generate import SampleSettings, generate_tokens

    for g, h, layout in COMBOS:
        m = build(g, h, layout).train()
        batch = random_batch(SPECS[layout], 4)
        with autocast("bf16", torch.device("cpu")):
            loss = m.loss(batch).loss
        loss.backward()
        assert torch.isfinite(loss), (g, h, layout)
        out = generate_tokens(m.eval(), batch.labels, SampleSettings(cfg=2.0, precision="bf16"), seed=0, batch_size=4)[
            0
        ]
        assert out.shape[:3] == batch.tokens.shape[:3], (g, h, layout)
        if SPECS[layout].kind == "continuous":
            assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_sample_precision_is_a_sampling_setting() -> None:
    """sample.precision reaches ``generate`` through the settings (autocast around it), a sweep entry may set it,
    and fp32 keeps the fingerprints and labels that settings had before the field existed."""
    from benchkit.core.config import SampleSettings
    from benchkit.core.identity import fingerprint
    from benchkit.evaluation.evaluate import settings_from
    from benchkit.sampling.generate import generate_tokens

    gen = GENERATORS.create("ar", spec=SPEC, head="ce", num_classes=4, width=32, depth=2, num_heads=2).eval()
    seen: list[torch.dtype] = []
    generate = gen.generate

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        return generate(*args, **kwargs)

    gen.generate = spy  # type: ignore[method-assign]
    bf16 = resolve("tiny", overrides=["sample.precision=bf16"]).sample.settings()
    for settings in (bf16, resolve("tiny").sample.settings()):
        generate_tokens(gen, LABELS[:2], settings, seed=0, batch_size=2)
    assert seen == [torch.bfloat16, torch.float32]

    swept = settings_from(resolve("tiny", overrides=['eval.sweep=[{precision = "fp16"}]']))
    assert [s.precision for s in swept] == ["fp32", "fp16"]
    fp32 = SampleSettings(cfg=2.0)
    before = {"steps": None, "cfg": 2.0, "cfg_schedule": "constant", "temperature": 1.0, "diffusion_steps": None}
    assert fingerprint(fp32) == fingerprint(before)
    assert fingerprint(SampleSettings(cfg=2.0, precision="bf16")) != fingerprint(fp32)
    assert fp32.label() == "cfg=2.0, cfg_schedule=constant, temperature=1.0"
    assert SampleSettings(precision="bf16").label().endswith("precision=bf16")
    with pytest.raises(ConfigError, match="unknown sample precision 'fp8'; valid: fp32, bf16, fp16"):
        SampleSettings(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sample.precision"):
        resolve("tiny", overrides=["sample.precision=fp8"])
