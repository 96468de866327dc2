"""Diffusion Loss head: a small denoising MLP models p(x | z) of one continuous token given its condition z.

MAR (Li et al., "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838; reference
implementation https://github.com/LTH14/mar at fe470ac, ``models/diffloss.py``). The denoiser is a residual MLP
with adaLN conditioning on y = TimestepEmbedding(t) + Linear(z) (the DiT block, Peebles & Xie, arXiv 2212.09748,
reduced to an MLP); adaLN outputs and the final layer start at zero, so every block starts as the identity and
the first prediction is 0. Training: DDPM noise prediction (Ho et al., arXiv 2006.11239) on a 1000-step cosine
schedule (IDDPM, arXiv 2102.09672), each token drawn ``batch_mul`` times per step (MAR Sec. 3.3). Sampling:
ancestral DDPM over an evenly respaced chain, the denoiser fed the ORIGINAL timestep indices; temperature scales
only the per-step noise (MAR Sec. 3.2); classifier-free guidance on the predicted noise in every step, with the
same initial noise for the conditional and unconditional copy (MAR Sec. 3.3 / code).

Deviations:
- Variance is fixed to the posterior variance beta~_t by default (``learn_sigma = False``); MAR learns it with
  IDDPM's hybrid loss, available here with ``learn_sigma = True`` (t = 0 term: see benchkit.nn.diffusion).
- DDIM (Song et al., arXiv 2010.02502) is offered as a faster sampler (``sampler = "ddim"``); MAR uses DDPM only.
- Predicted x_0 is clipped to the per-channel range of the training targets (``clip_x0``; the range is the buffer
  ``x0_bound``, tracked by ``loss`` in train mode, so an EMA copy must copy buffers too); MAR does not clip.
  With the cosine schedule (abar_999 = 2.4e-9) the first respaced step multiplies the error of the predicted
  noise by sqrt(abar_t' / abar_999), t' the next kept step: ~316 for 100 steps, ~1300 for 25. A head trained
  for minutes is not that precise and, unclipped, sends most samples of the 2-D mixture in the unit tests far
  off the data; clipped, accurate predictions are untouched. ``clip_x0 = False`` gives MAR's behaviour.
  Measured at ``tiny`` (docs/training-parity.md, ``benchmarks/head_divergence.py``): every unclipped MAR +
  Diffusion Loss model diverged, with fixed or learned variance, at 50-250 steps, any temperature and 4x the
  training; clipping alone keeps the chain finite, and the fixed variance is the better clipped head.
- Only the N conditional rows are stepped under CFG (the official code steps 2N and keeps the first half, whose
  result is the same); the learned variance, when on, is taken from the conditional rows.
- Parameter names match the official ``SimpleMLPAdaLN`` under ``net.`` (MAR keys ``diffloss.net.*``); its forward
  takes the adaLN condition precomputed (MAR's ``forward(x, t, c)`` is ``net(x, net.embed(t, c))``), so training
  embeds each timestep value and each token's z once, and sampling embeds z once per call: same values, less work.

``train.grad_checkpoint`` recomputes each residual block of the denoiser in the backward pass (as MAR's
``grad_checkpointing`` does), besides the generator's transformer blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, cast, get_args

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import TokenKind, TokenSpec
from benchkit.core.registry import HEADS
from benchkit.heads.common import check_head_kind, masked_mean
from benchkit.nn.diffusion import GaussianDiffusion
from benchkit.nn.embed import TimestepEmbedding

Sampler = Literal["ddpm", "ddim"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
MOD_CHUNK_ELEMENTS = 1 << 23  # at sampling, adaLN outputs of this many floats (32 MB) are computed per matmul


class _AddCMul(torch.autograd.Function):
    """torch.addcmul(a, b, c) of same-shape tensors whose backward forms two products, grad * c and grad * b:
    the built-in one forms four (each factor is first multiplied by addcmul's scalar ``value``), which at
    training's row counts is memory traffic the step can do without. Forward values and gradients are the same."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        a: torch.Tensor,
        b: torch.Tensor,
        c: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(b, c)
        return torch.addcmul(a, b, c)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx,
        grad: torch.Tensor,
    ) -> tuple[torch.Tensor | None, ...]:
        b, c = ctx.saved_tensors  # type: ignore[attr-defined]
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        return grad if need[0] else None, grad * c if need[1] else None, grad * b if need[2] else None


def addcmul(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a + b * c as torch.addcmul; under autograd with equal shapes through :class:`_AddCMul` (same values)."""
    if torch.is_grad_enabled() and a.shape == b.shape == c.shape and any(t.requires_grad for t in (a, b, c)):
        return _AddCMul.apply(a, b, c)
    return torch.addcmul(a, b, c)


class ResBlock(nn.Module):
    """x + gate * MLP(modulate(LN(x), shift, scale)), with (shift, scale, gate) = Linear(SiLU(y))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale1: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """x [N, W] and this block's adaLN outputs (shift, 1 + scale, gate), each [N, W] -> [N, W]."""
        # functional calls on the submodules' parameters (the same operations): sampling calls this 25-100 times
        # per token step on a few rows, where nn.Module call overhead is a visible share
        ln, fc1, fc2 = self.in_ln, cast(nn.Linear, self.mlp[0]), cast(nn.Linear, self.mlp[2])
        h = addcmul(shift, F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps), scale1)
        return addcmul(x, gate, F.linear(F.silu(F.linear(h, fc1.weight, fc1.bias)), fc2.weight, fc2.bias))


class FinalLayer(nn.Module):
    """Linear(modulate(LN(x), shift, scale)) with a parameter-free LayerNorm."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale1: torch.Tensor) -> torch.Tensor:
        """x [N, W] and this layer's adaLN outputs (shift, 1 + scale), each [N, W] -> [N, out_dim]."""
        norm = self.norm_final  # functional calls, as in ResBlock.forward
        h = addcmul(shift, F.layer_norm(x, norm.normalized_shape, None, None, norm.eps), scale1)
        return F.linear(h, self.linear.weight, self.linear.bias)


class DenoiserMLP(nn.Module):
    """MAR's SimpleMLPAdaLN: predicts noise (and optionally a variance interpolation) of x_t given t and z."""

    def __init__(self, in_dim: int, cond_dim: int, width: int, depth: int, out_dim: int) -> None:
        super().__init__()
        self.time_embed = TimestepEmbedding(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(in_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, out_dim)
        self.grad_checkpoint = False  # train.grad_checkpoint: recompute each residual block in the backward pass
        # MAR init: xavier Linear with zero bias (the time embedding keeps its N(0, 0.02)); zero adaLN outputs and
        # final Linear, so gates start at 0 (identity blocks) and the first output is 0
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("time_embed"):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in [*self.res_blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def embed(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The adaLN condition y = TimestepEmbedding(t) + Linear(z): t long [N] (original indices), z [N, cond_dim]."""
        return self.time_embed(t) + self.cond_embed(z)

    def adaln_layers(self) -> list[nn.Linear]:
        """The adaLN Linear of every residual block, then the final layer's."""
        blocks = [cast(ResBlock, block).adaLN_modulation for block in self.res_blocks]
        return [cast(nn.Linear, seq[-1]) for seq in [*blocks, self.final_layer.adaLN_modulation]]

    def modulations(self, y: torch.Tensor) -> torch.Tensor:
        """adaLN outputs of every block and the final layer, y [..., W] -> [..., (3 depth + 2) W], each block's
        part (shift, 1 + scale, gate) and the final layer's (shift, 1 + scale).

        Every adaLN is Linear(SiLU(y)) of the same y, so SiLU runs once and the Linears run as one matmul over
        their stacked weights, the 1 of ``modulate``'s (1 + scale) folded into the bias (the same values up to
        rounding). They depend on (t, z) only, not on x_t: sampling computes them for many steps at once.
        """
        layers = self.adaln_layers()
        weight = torch.cat([m.weight for m in layers])
        width = weight.shape[1]
        one = torch.ones(width, dtype=weight.dtype, device=weight.device)
        plus_one = torch.cat([F.pad(one, (width, m.out_features - 2 * width)) for m in layers])  # on every scale
        return F.linear(F.silu(y), weight, torch.cat([m.bias for m in layers]) + plus_one)

    def modulation_parts(self, y: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """The values of :meth:`modulations` as one (shift, 1 + scale[, gate]) tuple per layer, each part from its
        own Linear on the shared SiLU(y): separate tensors, so the backward pass needs no concatenation of their
        gradients (training, where rows are many and every large temporary costs memory traffic)."""
        act = F.silu(y)
        width = act.shape[-1]
        parts = []
        for m in self.adaln_layers():
            weights, biases = m.weight.split(width), m.bias.split(width)
            parts.append(
                tuple(
                    F.linear(act, w, b + 1 if j == 1 else b)
                    for j, (w, b) in enumerate(zip(weights, biases, strict=True))
                )
            )
        return parts

    def forward_modulated(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        """x [N, C] with precomputed ``modulations`` [N, (3 depth + 2) W] -> [N, out_dim]."""
        width = self.input_proj.out_features
        layers = mods.split([3 * width] * len(self.res_blocks) + [2 * width], dim=-1)
        return self.forward_parts(x, [layer.split(width, dim=-1) for layer in layers])

    def forward_parts(self, x: torch.Tensor, parts: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """x [N, C] with the adaLN outputs of every layer (:meth:`modulation_parts`) -> [N, out_dim]."""
        h = self.input_proj(x)
        recompute = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for block, mod in zip(self.res_blocks, parts[:-1], strict=True):
            h = torch.utils.checkpoint.checkpoint(block, h, *mod, use_reentrant=False) if recompute else block(h, *mod)
        return self.final_layer(h, *parts[-1])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [N, C], condition y [N, width] (see :meth:`embed`; MAR's forward(x, t, c) is forward(x, embed(t, c)))
        -> [N, out_dim]. The condition is an argument so callers can reuse its parts across rows and steps."""
        return self.forward_parts(x, self.modulation_parts(y))


@dataclass(frozen=True)
class DiffLossConfig:
    """Options of the Diffusion Loss head."""

    width: int = 64
    depth: int = 2
    batch_mul: int = 4  # independent (t, noise) draws per token per training step
    num_timesteps: int = 1000  # training chain length (cosine schedule)
    sampling_steps: int = 100  # respaced chain length at sampling (a sampling call's diffusion_steps overrides it)
    sampler: Sampler = "ddpm"
    ddim_eta: float = 0.0  # DDIM noise level (0 = deterministic)
    learn_sigma: bool = False  # learn the reverse variance with IDDPM's hybrid loss (MAR does)
    clip_x0: bool = True  # at sampling, clip predicted x_0 to the per-channel range of the training targets

    def __post_init__(self) -> None:
        for name, value in {"width": self.width, "depth": self.depth, "batch_mul": self.batch_mul}.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        if not 1 <= self.sampling_steps <= self.num_timesteps:
            raise ValueError(f"sampling_steps must be in [1, {self.num_timesteps}], got {self.sampling_steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.ddim_eta < 0:
            raise ValueError(f"ddim_eta must be >= 0, got {self.ddim_eta}")


@HEADS.register("diffloss", config=DiffLossConfig)
class DiffLossHead(nn.Module):
    """Diffusion Loss (MAR): an adaLN MLP denoiser models each continuous token; DDPM/DDIM sampling with CFG."""

    kinds: ClassVar[tuple[TokenKind, ...]] = ("continuous",)
    x0_bound: torch.Tensor  # buffer, registered in __init__

    def __init__(self, cfg: DiffLossConfig, *, spec: TokenSpec, cond_dim: int) -> None:
        super().__init__()
        check_head_kind("diffloss", self.kinds, spec)
        assert spec.dim is not None, "a continuous TokenSpec always has dim"
        self.cfg, self.dim, self.cond_dim = cfg, int(spec.dim), cond_dim
        out_dim = 2 * self.dim if cfg.learn_sigma else self.dim  # [eps | v]
        self.net = DenoiserMLP(self.dim, cond_dim, cfg.width, cfg.depth, out_dim)
        self.diffusion = GaussianDiffusion.cosine(cfg.num_timesteps)
        self._chains: dict[int, GaussianDiffusion] = {}
        # largest |target| per channel seen in training (inf until the first training batch): the x_0 clip range
        self.register_buffer("x0_bound", torch.full((self.dim,), float("inf")))

    def chain(self, steps: int) -> GaussianDiffusion:
        """The training chain respaced to ``steps`` steps (cached)."""
        if steps not in self._chains:
            self._chains[steps] = self.diffusion.respace(steps)
        return self._chains[steps]

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Denoiser output -> (eps [N, C], v [N, C] in [-1, 1] or None)."""
        if not self.cfg.learn_sigma:
            return out, None
        eps, v = out.split(self.dim, dim=-1)
        return eps, v

    def loss(self, cond: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-prediction MSE of target tokens [N, C] given cond [N, cond_dim], mean over rows where mask == 1."""
        assert target.shape == (cond.shape[0], self.dim), f"target {tuple(target.shape)} must be [N, {self.dim}]"
        mul = self.cfg.batch_mul
        if self.training:  # track the data range for clip_x0
            seen = target.detach().float().abs().amax(dim=0)
            self.x0_bound.copy_(torch.where(torch.isinf(self.x0_bound), seen, torch.maximum(self.x0_bound, seen)))
        # 1. tile rows: each token gets `mul` independent (t, noise) draws (MAR Sec. 3.3)     [N*mul, ...]
        x0 = target.float().repeat(mul, 1)
        w = mask.repeat(mul) if mask is not None else None
        # 2. t ~ U{0..T-1}, eps ~ N(0, I); x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (Ho et al. eq. 4)
        T = self.diffusion.num_steps
        t = torch.randint(0, T, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.diffusion.q_sample(x0, t, noise)
        # 3. condition y = TimestepEmbedding(t) + Linear(z), the same values as net.embed(t, z.repeat(mul, 1)) with
        #    less work: Linear(z) once per token, then tiled; with more rows than timesteps, the time embedding
        #    once per timestep, then gathered
        if t.numel() > T:
            t_emb = F.embedding(t, self.net.time_embed(torch.arange(T, device=t.device)))
        else:
            t_emb = self.net.time_embed(t)
        y = t_emb + self.net.cond_embed(cond).repeat(mul, 1)
        # 4. predict eps; L_simple = ||eps - eps_theta(x_t, t, z)||^2 averaged over channels   (Ho et al. eq. 14)
        eps, v = self._split(self.net(x_t, y).float())
        per_row = F.mse_loss(eps, noise, reduction="none").mean(dim=-1)
        # 5. learned variance: add the bound term with eps detached (IDDPM hybrid loss, eq. 16, lambda = 1)
        if v is not None:
            per_row = per_row + self.diffusion.vlb_bits(x0, x_t, t, eps.detach(), v)
        return masked_mean(per_row, w)

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        *,
        temperature: float = 1.0,
        cfg: float = 1.0,
        generator: torch.Generator | None = None,
        diffusion_steps: int | None = None,
    ) -> torch.Tensor:
        """Draw tokens float [N, C]; with cfg != 1, cond holds 2N rows (conditional first) and N rows come back.

        ``diffusion_steps`` (None: ``cfg.sampling_steps``) is the respaced chain length; ``temperature`` (checked
        by ``SampleSettings``) scales the per-step noise, 0 gives none.
        """
        steps = self.cfg.sampling_steps if diffusion_steps is None else diffusion_steps
        if not 1 <= steps <= self.diffusion.num_steps:
            raise ConfigError(f"diffusion_steps must be in [1, {self.diffusion.num_steps}], got {steps}")
        guided = cfg != 1.0
        rows = cond.shape[0]
        assert not guided or rows % 2 == 0, f"cfg != 1 needs 2N rows (cond then uncond), got {rows}"
        n = rows // 2 if guided else rows
        chain, ddim = self.chain(steps), self.cfg.sampler == "ddim"
        stochastic = not ddim or self.cfg.ddim_eta > 0
        dev = cond.device
        bound = self.x0_bound if self.cfg.clip_x0 and bool(torch.isfinite(self.x0_bound).all()) else None
        # 1. x_K ~ N(0, I), not scaled by temperature; one copy shared by the cond and uncond rows
        x = torch.randn(n, self.dim, generator=generator, device=dev)
        # the adaLN outputs depend on (t, z) only: computed for a chunk of steps at once, one matmul per chunk
        z_emb = self.net.cond_embed(cond)  # [rows, W]
        t_emb = self.net.time_embed(chain.timesteps.to(dev))  # [K, W]: ORIGINAL timestep indices of the chain
        per_chunk = max(1, MOD_CHUNK_ELEMENTS // (rows * (3 * self.cfg.depth + 2) * self.cfg.width))
        mods = torch.empty(0)
        for i in reversed(range(chain.num_steps)):
            if (chain.num_steps - 1 - i) % per_chunk == 0:
                lo = max(0, i + 1 - per_chunk)
                mods = self.net.modulations(z_emb + t_emb[lo : i + 1, None])  # [i + 1 - lo, rows, M]
            # 2. the denoiser sees the ORIGINAL timestep index of respaced step i (through mods)
            eps, v = self._split(self.net.forward_modulated(torch.cat([x, x]) if guided else x, mods[i - lo]).float())
            # 3. CFG on the predicted noise: eps = eps_u + w (eps_c - eps_u)
            if guided:
                eps_c, eps_u = eps.chunk(2, dim=0)
                eps = eps_u + cfg * (eps_c - eps_u)
                v = v[:n] if v is not None else None
            # 4. x_{t-1} from x_t: ancestral DDPM (tau scales sigma_t z) or DDIM
            noise = None
            if i > 0 and stochastic and temperature > 0:
                noise = torch.randn(n, self.dim, generator=generator, device=dev)
            if ddim:
                x = chain.ddim_step(x, i, eps, noise, eta=self.cfg.ddim_eta, temperature=temperature, x0_bound=bound)
            else:
                x = chain.ddpm_step(x, i, eps, noise, temperature=temperature, v=v, x0_bound=bound)
        return x
