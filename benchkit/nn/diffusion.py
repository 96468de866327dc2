"""Gaussian diffusion over small vectors: cosine schedule, forward noising, respacing, DDPM and DDIM reverse steps.

The process is DDPM (Ho et al., arXiv 2006.11239) with the cosine noise schedule and the learned-range variance
of improved DDPM (Nichol & Dhariwal, arXiv 2102.09672), as used by MAR's Diffusion Loss head (Li et al., arXiv
2406.11838; https://github.com/LTH14/mar at fe470ac, ``diffusion/``). DDIM steps follow Song et al., arXiv
2010.02502. Everything is vectorised over rows; only the caller loops over steps.

Notation (paper -> code): beta_t -> ``betas``; alpha_bar_t = prod_{s<=t} (1 - beta_s) -> ``alphas_cumprod``;
alpha_bar_{t-1} -> ``alphas_cumprod_prev``; beta~_t (posterior variance) -> ``posterior_variance``;
mu~_t coefficients -> ``posterior_mean_coef1/2``. A chain of K steps is indexed by ``i`` = 0..K-1;
``timesteps[i]`` is the ORIGINAL training index of step i (identity for the training chain), which is what the
denoiser must be given.

Deviations:
- Respacing to a single step keeps the LAST training step (IDDPM's rule would keep step 0, a chain that starts
  from nearly clean data); for K >= 2 the kept indices match IDDPM's ``space_timesteps`` exactly.
- The t = 0 term of the variational bound is a continuous Gaussian NLL (IDDPM uses a likelihood discretised for
  8-bit images in [-1, 1], which does not fit unit-variance latents).
- Optional clipping of the predicted x_0 to a per-channel bound (IDDPM's ``clip_denoised`` clips to [-1, 1]);
  MAR does not clip. See heads/diffloss.py for why the head turns it on by default.
- Schedules are float64 on the CPU; values are cast to the input's device and dtype when used.
"""

from __future__ import annotations

import math

import torch

from benchkit.core.errors import ConfigError


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """IDDPM eq. 17 without normalisation: f(t) = cos^2(((t + s) / (1 + s)) * pi / 2) for t in [0, 1]."""
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule: beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta), float64 [T]."""
    grid = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = cosine_alpha_bar(grid)
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def respaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """Evenly spaced original indices from 0 to T-1 (IDDPM ``space_timesteps`` with one section).

    >>> respaced_timesteps(1000, 25)[:3], respaced_timesteps(1000, 25)[-1]
    ([0, 42, 83], 999)
    """
    if not 1 <= steps <= num_timesteps:
        raise ConfigError(f"sampling steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    stride = (num_timesteps - 1) / (steps - 1)
    out, cur = [], 0.0
    for _ in range(steps):  # repeated addition, exactly as IDDPM rounds it
        out.append(round(cur))
        cur += stride
    return out


def _at(table: torch.Tensor, i: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor | float:
    """table[i] as a Python float (scalar step) or as a tensor [N, 1, ...] broadcastable against x [N, ...]."""
    if isinstance(i, int):
        return float(table[i])
    vals = table.to(device=x.device)[i].to(x.dtype)
    return vals.view(-1, *([1] * (x.ndim - 1)))


def _clip(x0: torch.Tensor, bound: torch.Tensor | None) -> torch.Tensor:
    """Clamp x0 [N, C] to [-bound, bound] per channel (bound [C]); None leaves it as is."""
    return x0 if bound is None else x0.clamp(min=-bound, max=bound)


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor | float, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


class GaussianDiffusion:
    """Schedule tables of one K-step chain plus the forward and reverse steps (no parameters)."""

    def __init__(self, betas: torch.Tensor, timesteps: torch.Tensor | None = None) -> None:
        assert betas.ndim == 1 and betas.numel() >= 1, f"betas must be a non-empty vector, got {tuple(betas.shape)}"
        b = betas.to(torch.float64)
        k = b.numel()
        self.num_steps = k
        self.timesteps = torch.arange(k) if timesteps is None else timesteps.long()
        self.betas = b
        alphas = 1.0 - b
        self.alphas_cumprod = torch.cumprod(alphas, 0)
        self.alphas_cumprod_prev = torch.cat([b.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # Ho et al. eq. 7: q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)
        self.posterior_variance = b * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0: clip its log to beta~_1 (IDDPM); a one-step chain falls back to beta_0
        first = self.posterior_variance[1:2] if k > 1 else b[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = b * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)
        self.log_betas = b.log()
        self._floats: dict[int, list[float]] = {}  # Python copies of the tables, made on first scalar use

    def _at(self, table: torch.Tensor, i: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor | float:
        """``_at`` for one of this chain's tables; a scalar step reads a Python copy of the table (no tensor op)."""
        if not isinstance(i, int):
            return _at(table, i, x)
        floats = self._floats.get(id(table))
        if floats is None:
            floats = self._floats[id(table)] = table.tolist()
        return floats[i]

    @classmethod
    def cosine(cls, num_timesteps: int = 1000) -> GaussianDiffusion:
        """The training chain: cosine schedule over ``num_timesteps`` steps."""
        return cls(cosine_betas(num_timesteps))

    def respace(self, steps: int) -> GaussianDiffusion:
        """A K-step chain over evenly spaced original timesteps with the same alpha_bar at each kept step."""
        keep = torch.tensor(respaced_timesteps(self.num_steps, steps))
        abar = self.alphas_cumprod[keep]
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return GaussianDiffusion(1.0 - abar / abar_prev, timesteps=self.timesteps[keep])

    # forward process -------------------------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. eq. 4); t long [N] indexes this chain."""
        a, b = self._at(self.sqrt_alphas_cumprod, t, x0), self._at(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return a * x0 + b * noise

    def predict_x0(self, x_t: torch.Tensor, i: int | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), from predicted noise."""
        a, b = self._at(self.sqrt_recip_alphas_cumprod, i, x_t), self._at(self.sqrt_recipm1_alphas_cumprod, i, x_t)
        return a * x_t - b * eps

    def q_posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
        """mu~_t(x_t, x_0) (Ho et al. eq. 7)."""
        c1, c2 = self._at(self.posterior_mean_coef1, i, x_t), self._at(self.posterior_mean_coef2, i, x_t)
        return c1 * x0 + c2 * x_t

    def log_variance(self, i: int | torch.Tensor, x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Reverse-step log variance: fixed log beta~_t (clipped), or IDDPM eq. 15 with v in [-1, 1] when learned."""
        fixed = self._at(self.posterior_log_variance_clipped, i, x)
        if v is None:
            return torch.as_tensor(fixed, dtype=x.dtype, device=x.device).expand_as(x)
        frac = (v + 1) / 2  # IDDPM eq. 15: log sigma^2 = frac log beta_t + (1 - frac) log beta~_t
        return frac * self._at(self.log_betas, i, x) + (1 - frac) * fixed

    # reverse steps (x_t -> x_{t-1}); i is a Python int shared by all rows ---------------------------------------

    def ddpm_step(
        self,
        x_t: torch.Tensor,
        i: int,
        eps: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        temperature: float = 1.0,
        v: torch.Tensor | None = None,
        x0_bound: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ancestral step x_{t-1} = mu_theta + tau * sigma_t * z (Ho et al. Alg. 2; tau scales only the noise, MAR)."""
        # 1. x_0 from the predicted noise (optionally clipped), then the posterior mean mu~_t(x_t, x_0)  (eq. 7, 15)
        x0 = _clip(self.predict_x0(x_t, i, eps), x0_bound)
        mean = self.q_posterior_mean(x0, x_t, i)
        if i == 0 or noise is None or temperature == 0:  # 2. no noise on the final step
            return mean
        # 3. add tau * sigma_t * z with sigma_t^2 = beta~_t (fixed: one scalar per step) or the learned range
        if v is None:
            return mean + temperature * math.exp(0.5 * self._at(self.posterior_log_variance_clipped, i, x_t)) * noise
        return mean + temperature * torch.exp(0.5 * self.log_variance(i, x_t, v)) * noise

    def ddim_sigma(self, i: int, eta: float) -> float:
        """sigma_t(eta) = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}) (DDIM eq. 16)."""
        ab, ab_prev = float(self.alphas_cumprod[i]), float(self.alphas_cumprod_prev[i])
        return eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(max(1 - ab / ab_prev, 0.0))

    def ddim_step(
        self,
        x_t: torch.Tensor,
        i: int,
        eps: torch.Tensor,
        noise: torch.Tensor | None,
        *,
        eta: float = 0.0,
        temperature: float = 1.0,
        x0_bound: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM step (Song et al. eq. 12): deterministic for eta = 0; tau scales the eta-noise like DDPM's."""
        # 1. predicted x_0 (eq. 12, first term); after clipping, eps is re-derived from it (as IDDPM does)
        x0 = self.predict_x0(x_t, i, eps)
        if x0_bound is not None:
            x0 = _clip(x0, x0_bound)
            eps = (float(self.sqrt_recip_alphas_cumprod[i]) * x_t - x0) / float(self.sqrt_recipm1_alphas_cumprod[i])
        ab_prev = float(self.alphas_cumprod_prev[i])
        sigma = self.ddim_sigma(i, eta)
        # 2. direction pointing to x_t (eq. 12, second term)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        # 3. random noise (eq. 12, third term), skipped on the last step
        if i > 0 and noise is not None and sigma > 0 and temperature != 0:
            x = x + temperature * sigma * noise
        return x

    # variational bound (learned variance only) ----------------------------------------------------------------

    def vlb_bits(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Per-row L_{t-1} of the bound in bits/dim (IDDPM eq. 4-6); pass eps detached so only v learns from it."""
        true_mean = self.q_posterior_mean(x0, x_t, t)
        true_logvar = self._at(self.posterior_log_variance_clipped, t, x_t)
        mean = self.q_posterior_mean(self.predict_x0(x_t, t, eps), x_t, t)
        logvar = self.log_variance(t, x_t, v)
        kl = normal_kl(true_mean, true_logvar, mean, logvar).mean(dim=-1)
        # t = 0: -log p(x_0 | x_1) as a continuous Gaussian NLL (see Deviations)
        nll = 0.5 * (math.log(2 * math.pi) + logvar + (x0 - mean) ** 2 * torch.exp(-logvar)).mean(dim=-1)
        return torch.where(t == 0, nll, kl) / math.log(2.0)
