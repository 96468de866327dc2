"""The sampling fast paths compute the same values as the plain ones: MAR's row-selected decoder, the Diffusion
Loss denoiser's stacked and per-part adaLN and its addcmul, the per-chunk adaLN outputs of a sampling chain, a
chain's Python-float scalars."""

from __future__ import annotations

import pytest
import torch

from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.generators.mar import MARGenerator
from benchkit.heads import diffloss
from benchkit.heads.diffloss import DiffLossConfig, DiffLossHead
from benchkit.nn.diffusion import GaussianDiffusion
from benchkit.nn.embed import modulate
from benchkit.nn.transformer import Transformer

SPEC = TokenSpec("continuous", (3, 3), dim=4)


def perturbed_head(**options: object) -> DiffLossHead:
    """A Diffusion Loss head whose zero-initialised adaLN and final layers are made non-zero."""
    torch.manual_seed(0)
    head = DiffLossHead(DiffLossConfig(width=16, depth=2, **options), spec=SPEC, cond_dim=8)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return head.eval()


def test_transformer_forward_rows_is_forward_gathered() -> None:
    torch.manual_seed(0)
    net = Transformer(16, 2, 4).eval()
    x, rows = torch.randn(3, 7, 16), torch.tensor([[0, 5], [6, 1], [2, 2]])
    want = net(x).gather(1, rows[..., None].expand(-1, -1, 16))
    got = net.forward_rows(x, rows)
    assert got.shape == (3, 2, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mar_condition_rows_is_condition_gathered() -> None:
    torch.manual_seed(0)
    gen = GENERATORS.create("mar", spec=SPEC, head="diffloss", num_classes=3, width=16, buffer_size=2)
    assert isinstance(gen, MARGenerator)
    gen.eval()
    tokens, labels = torch.randn(2, 9, 4), torch.tensor([0, 3])
    order = torch.argsort(torch.rand(2, 9), dim=1)
    rows = order[:, 2:5]
    with torch.no_grad():
        want = gen.condition(tokens, labels, order, 5).gather(1, rows[..., None].expand(-1, -1, 16))
        got = gen.condition(tokens, labels, order, 5, rows=rows)
    assert got.shape == (2, 3, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_denoiser_stacked_adaln_matches_one_linear_per_block(learn_sigma: bool) -> None:
    net = perturbed_head(learn_sigma=learn_sigma).net
    x, y = torch.randn(5, 4), torch.randn(5, 16)
    with torch.no_grad():
        h = net.input_proj(x)
        for block in net.res_blocks:  # MAR's ResBlock: x + gate * mlp(modulate(LN(x), shift, scale))
            shift, scale, gate = block.adaLN_modulation(y).chunk(3, dim=-1)
            h = h + gate * block.mlp(modulate(block.in_ln(h), shift, scale))
        shift, scale = net.final_layer.adaLN_modulation(y).chunk(2, dim=-1)
        want = net.final_layer.linear(modulate(net.final_layer.norm_final(h), shift, scale))
        got = net(x, y)
    assert got.shape == (5, 8 if learn_sigma else 4) and want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_denoiser_per_part_adaln_equals_the_stacked_one_with_gradients() -> None:
    net = perturbed_head(learn_sigma=True).net.train()
    x, y = torch.randn(6, 4), torch.randn(6, 16, requires_grad=True)
    stacked = net.forward_modulated(x, net.modulations(y))  # the sampling path
    (g_stacked,) = torch.autograd.grad(stacked.square().sum(), y)
    parts = net(x, y)  # training: one Linear per adaLN part
    (g_parts,) = torch.autograd.grad(parts.square().sum(), y)
    assert [len(p) for p in net.modulation_parts(y)] == [3, 3, 2] and stacked.abs().max() > 0.1
    torch.testing.assert_close(parts, stacked, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_parts, g_stacked, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_sampling_in_chunks_of_steps_gives_the_same_tokens(cfg: float, monkeypatch: pytest.MonkeyPatch) -> None:
    head = perturbed_head(learn_sigma=True)
    cond = torch.randn(6, 8)
    one_chunk = head.sample(cond, cfg=cfg, diffusion_steps=7, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(diffloss, "MOD_CHUNK_ELEMENTS", 1)  # one step per chunk
    per_step = head.sample(cond, cfg=cfg, diffusion_steps=7, generator=torch.Generator().manual_seed(1))
    assert one_chunk.shape == (3 if cfg != 1.0 else 6, 4)
    torch.testing.assert_close(per_step, one_chunk, atol=1e-4, rtol=1e-4)


def test_chain_scalars_are_the_table_entries() -> None:
    chain = GaussianDiffusion.cosine(100).respace(9)
    x = torch.zeros(2, 3)
    for i in (0, 4, 8):
        got = chain._at(chain.posterior_mean_coef1, i, x)
        assert isinstance(got, float) and got == float(chain.posterior_mean_coef1[i])
        assert chain._at(chain.log_betas, i, x) == float(chain.betas[i].log())
    rows = chain._at(chain.sqrt_alphas_cumprod, torch.tensor([1, 8]), x)
    assert isinstance(rows, torch.Tensor) and rows.shape == (2, 1)


def test_denoiser_addcmul_has_the_builtin_values_and_gradients() -> None:
    torch.manual_seed(0)
    a, b, c = (torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    got = diffloss.addcmul(a, b, c)
    assert got.grad_fn is not None and type(got.grad_fn).__name__ != "AddcmulBackward0"  # the custom backward
    assert torch.equal(got, torch.addcmul(a, b, c))
    assert torch.autograd.gradcheck(diffloss.addcmul, (a, b, c))
