"""Per-token heads (ce, diffloss) and their building blocks (timestep embedding, Gaussian diffusion)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchkit.core.errors import ConfigError, IncompatibleComponentsError
from benchkit.core.interfaces import Head, TokenSpec
from benchkit.core.registry import HEADS
from benchkit.heads.ce import CEHead, filter_top_k, filter_top_p
from benchkit.heads.common import masked_mean
from benchkit.heads.diffloss import DiffLossHead
from benchkit.nn.diffusion import GaussianDiffusion, cosine_betas, respaced_timesteps
from benchkit.nn.embed import TimestepEmbedding, modulate, sinusoidal_embedding

DISCRETE = TokenSpec("discrete", (2, 2), vocab_size=16)
CONTINUOUS = TokenSpec("continuous", (2, 2), dim=4)
COND = 12


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ce_head(**options: object) -> CEHead:
    torch.manual_seed(0)
    return HEADS.create("ce", spec=DISCRETE, cond_dim=COND, **options)


def diff_head(**options: object) -> DiffLossHead:
    torch.manual_seed(0)
    options = {"width": 32, "depth": 2, "sampling_steps": 10, **options}
    return HEADS.create("diffloss", spec=CONTINUOUS, cond_dim=COND, **options)


def train_steps(head: torch.nn.Module, cond: torch.Tensor, target: torch.Tensor, steps: int) -> None:
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        head.loss(cond, target).backward()
        opt.step()


# registry and kinds ---------------------------------------------------------------------------------------------


def test_registry_lists_both_heads_with_kinds_and_protocol() -> None:
    assert {"ce", "diffloss"} <= set(HEADS.names())
    assert HEADS.get("ce").factory.kinds == ("discrete",)
    assert HEADS.get("diffloss").factory.kinds == ("continuous",)
    assert HEADS.describe("diffloss")["options"]["sampling_steps"] == 100
    assert isinstance(ce_head(), Head) and isinstance(diff_head(), Head)


@pytest.mark.parametrize(("name", "spec", "valid"), [("ce", CONTINUOUS, "diffloss"), ("diffloss", DISCRETE, "ce")])
def test_wrong_token_kind_names_the_valid_heads(name: str, spec: TokenSpec, valid: str) -> None:
    with pytest.raises(IncompatibleComponentsError, match=f"valid heads for {spec.kind} tokens: {valid}$"):
        HEADS.create(name, spec=spec, cond_dim=COND)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ce", {"top_p": 0.0}, "top_p must be in"),
        ("ce", {"top_k": -1}, "top_k must be >= 0"),
        ("diffloss", {"sampler": "euler"}, "'ddpm', 'ddim'"),
        ("diffloss", {"sampling_steps": 1001}, "sampling_steps must be in"),
        ("diffloss", {"batch_mul": 0}, "batch_mul must be >= 1"),
    ],
)
def test_bad_options_raise_config_error(name: str, options: dict[str, object], message: str) -> None:
    spec = DISCRETE if name == "ce" else CONTINUOUS
    with pytest.raises(ConfigError, match=message):
        HEADS.create(name, spec=spec, cond_dim=COND, **options)


def test_masked_mean() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    assert masked_mean(values, None).item() == pytest.approx(26.5)
    assert masked_mean(values, torch.tensor([1, 1, 1, 0])).item() == pytest.approx(2.0)
    assert masked_mean(values, torch.zeros(4)).item() == 0.0


# shared blocks -------------------------------------------------------------------------------------------------


def test_sinusoidal_embedding_and_modulate() -> None:
    emb = sinusoidal_embedding(torch.tensor([0, 999]), 256)
    assert emb.shape == (2, 256) and emb.dtype == torch.float32
    assert torch.equal(emb[0, :128], torch.ones(128)) and torch.equal(emb[0, 128:], torch.zeros(128))
    assert emb[1, 0].item() == pytest.approx(math.cos(999.0), abs=1e-4)  # frequency 1 in the first column
    assert sinusoidal_embedding(torch.tensor([3]), 7).shape == (1, 7)
    assert TimestepEmbedding(16)(torch.tensor([0, 5, 999])).shape == (3, 16)
    x = torch.randn(3, 5)
    assert torch.equal(modulate(x, torch.zeros(5), torch.zeros(5)), x)
    assert torch.allclose(modulate(x, torch.ones(5), torch.ones(5)), 2 * x + 1)


# diffusion schedule -------------------------------------------------------------------------------------------


def test_cosine_schedule_values() -> None:
    d = GaussianDiffusion.cosine(1000)
    abar = d.alphas_cumprod
    assert d.num_steps == 1000 and torch.all(abar[1:] < abar[:-1]), "alpha_bar must decrease strictly"
    assert 0 < abar[-1] < 1e-8 and 0.9999 < abar[0] < 1
    assert d.betas[0].item() == pytest.approx(4.13e-5, rel=1e-2)
    assert d.betas.max().item() == pytest.approx(0.999) and d.betas[-2].item() == pytest.approx(0.75, abs=1e-3)
    assert torch.equal(cosine_betas(1000), d.betas)


def test_respacing() -> None:
    ts = respaced_timesteps(1000, 100)
    assert len(ts) == 100 and ts[0] == 0 and ts[-1] == 999 and ts[:7] == [0, 10, 20, 30, 40, 50, 61]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    assert respaced_timesteps(1000, 25)[:3] == [0, 42, 83] and respaced_timesteps(1000, 1) == [999]
    d = GaussianDiffusion.cosine(1000)
    r = d.respace(100)
    assert r.timesteps.tolist() == ts
    assert torch.allclose(r.alphas_cumprod, d.alphas_cumprod[ts]), "respacing keeps alpha_bar at the kept steps"
    with pytest.raises(ConfigError, match=r"in \[1, 1000\]"):
        d.respace(0)


def test_q_sample_and_reverse_steps_with_true_noise() -> None:
    d = GaussianDiffusion.cosine(1000).respace(50)
    x0, eps = torch.randn(6, 4), torch.randn(6, 4)
    i = 20
    x_t = d.q_sample(x0, torch.full((6,), i), eps)
    ab = d.alphas_cumprod[i].item()
    assert torch.allclose(x_t, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps, atol=1e-6)
    assert torch.allclose(d.predict_x0(x_t, i, eps), x0, atol=1e-4)
    # DDPM with the true noise and no sampling noise = the posterior mean; DDIM (eta 0) = the noised x0 at t-1
    assert torch.allclose(d.ddpm_step(x_t, i, eps, None), d.q_posterior_mean(x0, x_t, i), atol=1e-5)
    ab_prev = d.alphas_cumprod[i - 1].item()
    expected = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps
    assert torch.allclose(d.ddim_step(x_t, i, eps, None), expected, atol=1e-4)
    # noise enters as tau * sigma_t * z with sigma_t^2 the posterior variance
    z = torch.randn(6, 4)
    sigma = math.exp(0.5 * d.posterior_log_variance_clipped[i].item())
    diff = d.ddpm_step(x_t, i, eps, z, temperature=0.5) - d.ddpm_step(x_t, i, eps, None)
    assert torch.allclose(diff, 0.5 * sigma * z, atol=1e-5)
    assert torch.equal(d.ddpm_step(x_t, 0, eps, z), d.ddpm_step(x_t, 0, eps, None)), "no noise on the last step"


# cross-entropy head ------------------------------------------------------------------------------------------


def test_ce_shapes_loss_and_gradients() -> None:
    head = ce_head(hidden=8)
    cond, target = torch.randn(10, COND), torch.randint(0, 16, (10,))
    loss = head.loss(cond, target)
    assert loss.shape == () and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(math.log(16), abs=0.1), "small init: near-uniform logits"
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    ids = head.sample(cond, generator=gen(0))
    assert ids.shape == (10,) and ids.dtype == torch.long and 0 <= ids.min() and ids.max() < 16
    mask = torch.tensor([1] * 4 + [0] * 6)
    assert head.loss(cond, target, mask).item() == pytest.approx(head.loss(cond[:4], target[:4]).item(), rel=1e-6)


def test_ce_same_seed_same_ids() -> None:
    head, cond = ce_head(), torch.randn(64, COND)
    assert torch.equal(head.sample(cond, generator=gen(3)), head.sample(cond, generator=gen(3)))
    assert not torch.equal(head.sample(cond, generator=gen(3)), head.sample(cond, generator=gen(4)))


def fixed_distribution_head(probs: list[float]) -> CEHead:
    """A CE head whose logits are log(probs) for every cond."""
    head = HEADS.create("ce", spec=TokenSpec("discrete", (1, 1), vocab_size=len(probs)), cond_dim=COND)
    with torch.no_grad():
        head.net.weight.zero_()
        head.net.bias.copy_(torch.tensor(probs).log())
    return head


def test_ce_samples_follow_the_softmax_and_filters() -> None:
    probs = [0.5, 0.3, 0.15, 0.05]
    head, cond = fixed_distribution_head(probs), torch.zeros(20000, COND)
    freq = torch.bincount(head.sample(cond, generator=gen(0)), minlength=4).float() / 20000
    assert torch.allclose(freq, torch.tensor(probs), atol=0.015)
    head.cfg = dataclasses.replace(head.cfg, top_p=0.7)  # keeps {0, 1}: mass 0.8 >= 0.7
    freq = torch.bincount(head.sample(cond, generator=gen(0)), minlength=4).float() / 20000
    assert freq[2:].sum() == 0 and freq[0].item() == pytest.approx(0.5 / 0.8, abs=0.015)
    head.cfg = dataclasses.replace(head.cfg, top_p=1.0, top_k=3)
    freq = torch.bincount(head.sample(cond, generator=gen(0)), minlength=4).float() / 20000
    assert freq[3] == 0 and freq[2].item() == pytest.approx(0.15 / 0.95, abs=0.015)
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(filter_top_k(logits, 2)).tolist() == [[False, True, False, True]]
    assert torch.isinf(filter_top_p(logits, 0.5)).tolist() == [[False, True, True, True]]


def test_ce_top_k_one_and_low_temperature_are_argmax() -> None:
    head, cond = ce_head(), torch.randn(32, COND)
    greedy = head(cond).argmax(-1)
    assert torch.equal(head.sample(cond, temperature=0.0, generator=gen(0)), greedy)
    assert torch.equal(head.sample(cond, temperature=1e-4, generator=gen(0)), greedy)
    head.cfg = dataclasses.replace(head.cfg, top_k=1)
    assert torch.equal(head.sample(cond, temperature=5.0, generator=gen(1)), greedy)


def test_ce_temperature_flattens_or_sharpens() -> None:
    head, cond = fixed_distribution_head([0.5, 0.3, 0.15, 0.05]), torch.zeros(20000, COND)
    cold = torch.bincount(head.sample(cond, temperature=0.5, generator=gen(0)), minlength=4).float() / 20000
    hot = torch.bincount(head.sample(cond, temperature=100.0, generator=gen(0)), minlength=4).float() / 20000
    expected_cold = torch.softmax(torch.tensor([0.5, 0.3, 0.15, 0.05]).log() / 0.5, -1)
    assert torch.allclose(cold, expected_cold, atol=0.015)
    assert torch.allclose(hot, torch.full((4,), 0.25), atol=0.02)


def test_ce_cfg() -> None:
    head = ce_head()
    c, u = torch.randn(8, COND), torch.randn(8, COND)
    plain = head.sample(c, generator=gen(5))
    assert torch.equal(head.sample(torch.cat([c, c]), cfg=3.0, generator=gen(5)), plain), "u == c: guidance is a no-op"
    guided = head.sample(torch.cat([c, u]), cfg=2.5, temperature=0.0)
    assert guided.shape == (8,)
    assert torch.equal(guided, (head(u) + 2.5 * (head(c) - head(u))).argmax(-1))


# diffusion loss head ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_diffloss_shapes_loss_and_gradients(learn_sigma: bool) -> None:
    head = diff_head(learn_sigma=learn_sigma)
    cond, target = torch.randn(16, COND), torch.randn(16, 4)
    loss = head.loss(cond, target)
    assert loss.shape == () and torch.isfinite(loss)
    if not learn_sigma:  # zero-init final layer: eps_theta = 0, so the loss is E[eps^2] = 1
        assert loss.item() == pytest.approx(1.0, abs=0.2)
    train_steps(head, cond, target, 3)  # zero-init adaLN/final layers pass gradient on only after a step
    head.zero_grad()
    head.loss(cond, target).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    x = head.sample(cond, generator=gen(0))
    assert x.shape == (16, 4) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_diffloss_batch_mul_tiles_rows_and_tracks_range() -> None:
    head = diff_head(batch_mul=3)
    rows: list[int] = []
    head.net.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    target = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-3.0, 1.0, 0.0, 0.25]])
    head.loss(torch.randn(2, COND), target)
    assert rows == [6]
    assert head.x0_bound.tolist() == [3.0, 2.0, 0.5, 0.25]
    head.eval()
    head.loss(torch.randn(2, COND), 10 * target)
    assert head.x0_bound.tolist() == [3.0, 2.0, 0.5, 0.25], "the range is tracked in training mode only"
    torch.manual_seed(1)
    a = head.loss(torch.ones(2, COND), target)
    torch.manual_seed(1)
    assert torch.equal(a, head.loss(torch.ones(2, COND), target, torch.ones(2))), "all-ones mask = no mask"


def test_diffloss_same_seed_same_tokens_and_attributes() -> None:
    head, cond = diff_head(), torch.randn(8, COND)
    train_steps(head, cond, torch.randn(8, 4), 3)
    for sampler in ("ddpm", "ddim"):
        head.cfg = dataclasses.replace(head.cfg, sampler=sampler)
        a = head.sample(cond, generator=gen(7))
        assert torch.equal(a, head.sample(cond, generator=gen(7))), sampler
        assert not torch.equal(a, head.sample(cond, generator=gen(8))), sampler
    assert head.chain(4).timesteps.tolist() == [0, 333, 666, 999]
    assert not torch.equal(head.sample(cond, generator=gen(7), diffusion_steps=4), a)
    with pytest.raises(ConfigError, match=r"diffusion_steps must be in \[1, 1000\], got 0"):
        head.sample(cond, diffusion_steps=0)
    with pytest.raises(ConfigError, match="sampler = 'euler' is not valid; valid: 'ddpm', 'ddim'"):
        HEADS.create("diffloss", spec=TokenSpec("continuous", (1, 1), dim=4), cond_dim=COND, sampler="euler")


def test_diffloss_temperature_scales_only_step_noise() -> None:
    head, cond = diff_head(sampling_steps=1), torch.randn(8, COND)
    train_steps(head, cond, torch.randn(8, 4), 3)
    # one step: x_T is drawn, then the final (noise-free) step; temperature must not touch x_T
    assert torch.equal(head.sample(cond, temperature=0.0, generator=gen(2)), head.sample(cond, generator=gen(2)))
    cold = head.sample(cond, temperature=0.0, generator=gen(2), diffusion_steps=10)
    assert not torch.equal(cold, head.sample(cond, temperature=1.0, generator=gen(2), diffusion_steps=10))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_diffloss_cfg_with_equal_rows_is_the_plain_path(sampler: str) -> None:
    head, c = diff_head(sampler=sampler, learn_sigma=True), torch.randn(8, COND)
    train_steps(head, c, torch.randn(8, 4), 3)
    plain = head.sample(c, generator=gen(9))
    guided = head.sample(torch.cat([c, c]), cfg=4.0, generator=gen(9))
    assert guided.shape == plain.shape == (8, 4)
    assert torch.allclose(guided, plain, atol=1e-5)
    other = head.sample(torch.cat([c, torch.randn(8, COND)]), cfg=4.0, generator=gen(9))
    assert not torch.allclose(other, plain, atol=1e-3), "different uncond rows must change the result"


def test_diffloss_clip_keeps_samples_in_the_training_range() -> None:
    head, cond = diff_head(), torch.randn(8, COND)
    head.loss(cond, torch.rand(8, 4) * 2 - 1)  # tracks the range, about [-1, 1]
    with torch.no_grad():  # a wild untrained denoiser
        head.net.final_layer.linear.weight.normal_(0, 5.0)
        head.net.final_layer.linear.bias.normal_(0, 5.0)
    x = head.sample(cond, generator=gen(0))
    assert (x.abs() <= head.x0_bound * 1.01 + 1e-3).all()
