"""Soft-target cross-entropy with stochastic codes (the RQ-Transformer configs' recipe): the quantizer's math, the ce
head's soft loss, the generator's option, and a tiny end-to-end run through the pipeline's latent cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchkit.core.config import resolve
from benchkit.core.errors import ConfigError, IncompatibleComponentsError
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.core.registry import GENERATORS, HEADS, TOKENIZERS
from benchkit.nn.codebook import soft_residual_codes


def _rq_tokenizer() -> torch.nn.Module:
    """A small rq tokenizer whose codebook was initialised from data (one train-mode forward), in eval mode."""
    torch.manual_seed(0)
    tok = TOKENIZERS.create("rq", image_size=16, ch=8, channel_mult=(1, 2), codebook_size=32, code_dim=8, depth=3)
    tok.loss(torch.rand(16, 3, 16, 16) * 2 - 1)  # restarts every code from batch vectors
    return tok.eval()


def test_soft_targets_are_distributions_and_tend_to_the_greedy_codes() -> None:
    tok = _rq_tokenizer()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    latent = tok.encode_latent(images)  # [4, 8, 8, 8]
    greedy = tok.encode(images, "discrete")  # [4, 8, 8, 3]
    ids, q = tok.soft_codes(latent, 0.5, stochastic=False)
    assert ids.shape == greedy.shape and q.shape == (*greedy.shape, 32)
    torch.testing.assert_close(q.sum(-1), torch.ones(greedy.shape), rtol=0, atol=1e-5)
    assert torch.equal(ids, greedy)  # without draws the inputs are the deterministic quantizer's ids
    assert q.max(-1).values.min() < 0.99  # tau = 0.5 really smooths on this latent scale
    for stochastic in (False, True):  # tau -> 0: one-hot targets at the argmin, and draws that are the argmin
        ids0, q0 = tok.soft_codes(latent, 1e-6, stochastic=stochastic, generator=torch.Generator().manual_seed(1))
        assert torch.equal(ids0, greedy)
        assert torch.equal(q0.argmax(-1), greedy) and q0.max(-1).values.min() > 0.999
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_residual_codes(latent, tok.codebook.weight, 3, 0.0, stochastic=False)


def test_stochastic_codes_follow_q() -> None:
    # one latent vector repeated: every row has the same q_1; the draws' frequencies must match it, and the second
    # depth's q is the one of the residual left by the code actually drawn
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = torch.tensor([0.4, 0.3]).expand(20_000, 2)
    ids, q = soft_residual_codes(z, codes, 2, 0.5, stochastic=True, generator=torch.Generator().manual_seed(0))
    q1 = (-((z[0] - codes) ** 2).sum(-1) / 0.5).softmax(-1)
    torch.testing.assert_close(q[:, 0], q1.expand(20_000, 4))
    freq = torch.bincount(ids[:, 0], minlength=4).float() / 20_000
    assert (freq - q1).abs().max() < 0.015, (freq, q1)  # binomial std <= 0.0035
    assert (freq > 0.05).all()  # every code is drawn: not the argmin
    for k in range(4):
        rows = ids[:, 0] == k
        r1 = z[0] - codes[k]
        torch.testing.assert_close(
            q[rows, 1], (-((r1 - codes) ** 2).sum(-1) / 0.5).softmax(-1).expand(int(rows.sum()), 4)
        )
    again, _ = soft_residual_codes(z, codes, 2, 0.5, stochastic=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, again)  # seeded draws repeat


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot_targets() -> None:
    torch.manual_seed(0)
    head = HEADS.create("ce", spec=TokenSpec("discrete", (1, 1), vocab_size=16), cond_dim=8)
    cond, ids = torch.randn(10, 8), torch.randint(0, 16, (10,))
    hard = head.loss(cond, ids)
    torch.testing.assert_close(head.loss(cond, F.one_hot(ids, 16).float()), hard)
    q = torch.rand(10, 16).softmax(-1)
    expected = -(q * F.log_softmax(head(cond), -1)).sum(-1).mean()
    torch.testing.assert_close(head.loss(cond, q), expected)


def test_generator_takes_soft_targets_and_checks_the_option() -> None:
    spec = TokenSpec("discrete", (2, 2), depth=3, vocab_size=16)
    torch.manual_seed(0)
    gen = GENERATORS.create(
        "rqtransformer",
        spec=spec,
        head="ce",
        num_classes=2,
        width=16,
        spatial_depth=1,
        num_heads=2,
        soft_target_temperature=0.5,
        stochastic_codes=True,
    ).eval()
    ids, labels = torch.randint(0, 16, (3, 2, 2, 3)), torch.tensor([0, 1, 0])
    hard = gen.loss(Batch(ids, labels)).loss
    torch.testing.assert_close(gen.loss(Batch(ids, labels, F.one_hot(ids, 16).float())).loss, hard)
    soft = gen.loss(Batch(ids, labels, torch.full((3, 2, 2, 3, 16), 1 / 16))).loss
    assert not torch.allclose(soft, hard)
    with pytest.raises(ConfigError, match="soft_target_temperature must be >= 0"):
        GENERATORS.create("rqtransformer", spec=spec, head="ce", num_classes=2, stochastic_codes=True)
    with pytest.raises(IncompatibleComponentsError, match="needs discrete tokens and the ce head"):
        GENERATORS.create(
            "rqtransformer",
            spec=TokenSpec("continuous", (2, 2), depth=3, dim=4),
            head="diffloss",
            num_classes=2,
            soft_target_temperature=0.5,
        )


def test_stochastic_codes_resume_exactly(tmp_path: Path) -> None:
    from benchkit.core.config import TrainConfig
    from benchkit.training.softcodes import SoftCodes, soft_code_batch
    from benchkit.training.trainer import fit

    tok = _rq_tokenizer()
    latents = tok.encode_latent(torch.rand(32, 3, 16, 16) * 2 - 1).detach()  # [32, 8, 8, 8]
    labels, soft = torch.arange(32) % 2, SoftCodes(0.5, True)

    def run(steps: int, out: Path) -> torch.nn.Module:
        torch.manual_seed(0)
        gen = GENERATORS.create(
            "rqtransformer",
            spec=tok.specs["discrete"],
            head="ce",
            num_classes=2,
            width=16,
            spatial_depth=1,
            num_heads=2,
            soft_target_temperature=0.5,
            stochastic_codes=True,
        )
        cfg = TrainConfig(
            steps=steps,
            batch_size=8,
            lr=1e-2,
            warmup_steps=1,
            schedule="constant",
            checkpoint_every=3,
            log_every=3,
            ema_decay=0.0,
        )
        fit(
            gen,
            lambda m, b: m.loss(b),
            lambda idx: soft_code_batch(tok, latents[idx], labels[idx], soft),
            32,
            cfg,
            out,
            seed=0,
            fingerprint="soft",
            show_progress=False,
        )
        return gen

    whole = run(6, tmp_path / "a")
    run(3, tmp_path / "b")
    resumed = run(6, tmp_path / "b")  # continues from the step-3 checkpoint, RNG state included
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_tiny_soft_target_run_trains_and_samples(tmp_path: Path) -> None:
    from benchkit.sampling.generate import generate_tokens
    from benchkit.training.generator import train_generator

    sets = [
        "data.options={num_train = 64, num_test = 64}",
        "tokenizer.name=rq",
        "tokenizer.options.ch=8",
        "tokenizer_train.steps=4",
        "tokenizer_train.batch_size=16",
        "tokenizer_train.warmup_steps=1",
        "generator.name=rqtransformer",
        "generator.options.width=32",
        "generator.options.spatial_depth=1",
        "generator.options.soft_target_temperature=0.5",
        "generator.options.stochastic_codes=true",
        "train.steps=6",
        "train.batch_size=16",
        "train.warmup_steps=1",
        "train.log_every=2",
        "train.hflip=true",
        f"out_dir={tmp_path}",
    ]
    run = train_generator(resolve("tiny", None, sets), progress=False)
    assert run.result is not None and torch.isfinite(torch.tensor(run.result.final_loss))
    latent_dir = run.tokenizer.dir / "latent"
    assert (latent_dir / "tokens-discrete.safetensors").is_file()  # the latent cache, beside the ids cache's place
    assert (latent_dir / "tokens-discrete-hflip.safetensors").is_file()
    assert not (run.tokenizer.dir / "tokens-discrete.safetensors").exists()  # the ids cache was never built
    (tokens,) = generate_tokens(run.generator, torch.tensor([0, 1]), run.cfg.sample, seed=0, batch_size=2)
    assert tokens.shape == (2, 4, 4, 4) and tokens.dtype == torch.long
    with pytest.raises(IncompatibleComponentsError, match="needs discrete tokens and head ce"):
        train_generator(resolve("tiny", None, [*sets, "head.name=diffloss"]), progress=False)


@pytest.mark.slow
def test_soft_targets_on_a_lazy_folder_cache_latent_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_lazy_data import make_folder

    import benchkit.training.checks as checks
    from benchkit.training.generator import train_generator
    from benchkit.training.tokencache import ShardedTokenCache

    monkeypatch.setattr(checks, "check_eval", lambda cfg: None)  # lazy data asks for Inception weights
    root = make_folder(tmp_path / "imagenet", classes=2, per_class=16, size=(40, 32))
    cfg = resolve(
        "tiny",
        None,
        [
            f'data.name="imagefolder:{root}"',
            "data.image_size=16",
            "data.options.lazy=true",
            "data.options.test_fraction=0.25",
            "tokenizer.name=rq",
            "tokenizer.options.ch=8",
            "tokenizer_train.steps=2",
            "tokenizer_train.batch_size=8",
            "generator.name=rqtransformer",
            "generator.options.width=16",
            "generator.options.soft_target_temperature=0.5",
            "generator.options.stochastic_codes=true",
            "train.steps=3",
            "train.batch_size=8",
            "train.hflip=true",
            f'out_dir="{tmp_path / "out"}"',
        ],
    )
    run = train_generator(cfg, progress=False)
    latents = ShardedTokenCache(run.tokenizer.dir / "latent" / "tokens-discrete-shards")
    assert len(latents) == 24 and latents[torch.arange(2)].shape == (2, 2, 2, 16)  # 2x2 positions of 16 channels
    assert (run.tokenizer.dir / "latent" / "tokens-discrete-hflip-shards").is_dir()
    assert run.result is not None and torch.isfinite(torch.tensor(run.result.final_loss))


@pytest.mark.parametrize("preset", ["rqt-480m", "rqt-821m", "rqt-1388m"])
def test_paper_presets_train_with_soft_targets(preset: str) -> None:
    from benchkit.training.softcodes import SoftCodes, soft_codes_of

    cfg = resolve(preset)
    assert soft_codes_of(cfg, "discrete") == SoftCodes(0.5, True)
    assert soft_codes_of(resolve(preset, None, ["generator.name=ar"]), "discrete") is None  # ar has no such option


def test_plan_counts_the_soft_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchkit.training import plan
    from benchkit.training.plan import make_plan

    monkeypatch.setattr(plan, "DRAWS", 1)  # nothing random in an RQ-Transformer step's shapes
    base = ["tokenizer.name=rq", "generator.name=rqtransformer"]
    hard = make_plan(resolve("tiny", None, base), gpus=1, num_classes=10)
    soft = make_plan(
        resolve("tiny", None, [*base, "generator.options.soft_target_temperature=0.5"]), gpus=1, num_classes=10
    )
    targets = 4 * 4 * 4 * 256 * 4  # 4x4 positions x 4 depths x 256 codes, float32, per image
    assert soft.flops_per_image == hard.flops_per_image
    assert soft.activation_bytes_per_image - hard.activation_bytes_per_image == pytest.approx(targets, rel=0.05)
