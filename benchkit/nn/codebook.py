"""Shared vector-quantizer machinery: one codebook with nearest-code lookup, EMA or learned updates, restarts.

Method: VQ-VAE (van den Oord et al. 2017, arXiv 1711.00937) with the EMA codebook update of its Appendix A.1
(eqs. 6-8), the dead-code restart of RQ-VAE (Lee et al. 2022, arXiv 2203.01941; kakaobrain/rq-vae-transformer
@341395e ``rqvae/models/rqvae/quantizations.py``) and the optional l2-normalised low-dimensional codes of LlamaGen
(Sun et al. 2024, arXiv 2406.06525; FoundationVision/LlamaGen @ce98ec4 ``tokenizer/tokenizer_image/vq_model.py``).
``tokenizers/vq.py`` uses one Codebook once; ``tokenizers/rq.py`` uses one shared Codebook D times on residuals.
``soft_residual_codes`` is the soft-label residual quantizer of the RQ-Transformer configs (soft targets at a
temperature, optionally with stochastic codes; see ``benchkit/training/softcodes.py``).

Notation (paper -> code): e_k -> ``embed[k]``, N_k (EMA cluster size) -> ``cluster_size[k]``, m_k (EMA sum of
assigned encoder outputs) -> ``embed_sum[k]``, gamma (decay) -> ``decay``, z_e(x) -> ``z``, beta -> ``beta``.

Deviations:
- ``update="learned"`` (codebook learned by the codebook loss, as in taming/LlamaGen) still keeps the EMA cluster
  sizes, but only to decide restarts and to report usage.
- A restarted code's EMA count is reset to ``restart_threshold`` (RQ-VAE resets to 1 with threshold 1); its EMA sum
  is reset to ``threshold * vector`` so the next EMA step starts from the new vector.
- When a batch has fewer vectors than dead codes, vectors are drawn with replacement and perturbed by uniform noise
  of scale 0.01/sqrt(dim) (RQ-VAE tiles the batch the same way).
- Under torch.distributed the counts and sums are all-reduced and the restart vectors broadcast from rank 0.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["Codebook", "CodebookUpdate", "code_usage", "soft_residual_codes", "straight_through"]

log = logging.getLogger(__name__)
CodebookUpdate = Literal["ema", "learned"]


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: the value of ``q`` with the gradient of ``z`` (z + sg(q - z))."""
    return z + (q - z).detach()


def check_codebook_options(cfg: Any) -> None:
    """Range check of the codebook options the quantizing tokenizers' configs carry (size, dim, decay, beta, ...)."""
    if cfg.codebook_size < 2:
        raise ValueError(f"codebook_size must be >= 2, got {cfg.codebook_size}")
    if cfg.code_dim < 1:
        raise ValueError(f"code_dim must be >= 1, got {cfg.code_dim}")
    if not 0.0 <= cfg.decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {cfg.decay}")
    if cfg.beta < 0 or cfg.restart_threshold < 0:
        raise ValueError("beta and restart_threshold must be >= 0")


def code_usage(ids: torch.Tensor, num_codes: int) -> tuple[float, float]:
    """(fraction of the ``num_codes`` codes that occur in ``ids``, perplexity exp(H) of their empirical frequencies)."""
    counts = torch.bincount(ids.reshape(-1), minlength=num_codes).float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * p.clamp_min(1e-12).log()).sum()
    return float((counts > 0).float().mean()), float(entropy.exp())


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class Codebook(nn.Module):
    """K code vectors of dimension C: nearest-code lookup, EMA or learned updates, dead-code restart.

    Inputs are flat ``[N, C]`` rows. Call :meth:`normalize` on encoder outputs first (identity unless
    ``l2_normalize``), then :meth:`quantize`, which in train mode also updates the codebook.
    """

    embed: torch.Tensor  # a buffer (EMA updates) or a Parameter (learned)
    embed_sum: torch.Tensor
    cluster_size: torch.Tensor

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        update: CodebookUpdate = "ema",
        decay: float = 0.99,
        beta: float = 0.25,
        l2_normalize: bool = False,
        restart_threshold: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ValueError(f"need num_codes >= 2 and dim >= 1, got {num_codes}, {dim}")
        if update not in ("ema", "learned"):
            raise ValueError(f"update must be 'ema' or 'learned', got {update!r}")
        self.num_codes, self.dim, self.update_rule = num_codes, dim, update
        self.decay, self.beta, self.l2_normalize = decay, beta, l2_normalize
        self.restart_threshold, self.eps = restart_threshold, eps
        init = torch.randn(num_codes, dim)
        init = F.normalize(init, dim=-1) if l2_normalize else init
        if update == "ema":
            self.register_buffer("embed", init)
            self.register_buffer("embed_sum", init.clone())
        else:
            self.embed = nn.Parameter(init)
        # A count of 0 marks every code dead, so the first training step restarts all of them from batch vectors:
        # a data-dependent initialisation for free.
        self.register_buffer("cluster_size", torch.zeros(num_codes))

    @property
    def weight(self) -> torch.Tensor:
        """The code vectors [K, C] as the decoder sees them (l2-normalised when ``l2_normalize``)."""
        return F.normalize(self.embed, dim=-1) if self.l2_normalize else self.embed

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Map encoder outputs [..., C] into code space (l2-normalise when ``l2_normalize``, else identity)."""
        return F.normalize(z, dim=-1) if self.l2_normalize else z

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Code vectors for ids: long [...] -> float [..., C]."""
        return F.embedding(ids, self.weight)

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (squared Euclidean) for each row: [N, C] -> long [N]."""
        return code_distances(z.detach().float(), self.weight.float()).argmin(dim=-1)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes for rows z [N, C] (in code space): (ids long [N], codes [N, C]); updates in train mode."""
        assert z.ndim == 2 and z.shape[1] == self.dim, f"expected [N, {self.dim}], got {tuple(z.shape)}"
        ids = self.nearest(z)
        if self.training:
            self.update(z, ids)
        return ids, self.lookup(ids)

    def loss(self, z: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(quantizer loss, commitment mse): beta*||z - sg(e)||^2, plus ||sg(z) - e||^2 for a learned codebook."""
        commit = F.mse_loss(z, codes.detach())
        total = self.beta * commit
        if self.update_rule == "learned":
            total = total + F.mse_loss(z.detach(), codes)
        return total, commit.detach()

    @torch.no_grad()
    def update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        """One training step of the codebook for rows z [N, C] assigned to ids [N]: EMA update, then restarts."""
        z = z.detach().float()
        K = self.num_codes
        # 1. Per-code assignment counts n_k and sums of assigned vectors (eqs. 6-7, before the decay).
        counts = torch.bincount(ids, minlength=K).to(z.dtype)
        sums = torch.zeros(K, self.dim, device=z.device, dtype=z.dtype).index_add_(0, ids, z)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        # 2. N_k <- gamma N_k + (1 - gamma) n_k (eq. 6); kept for both update rules, it drives the restarts.
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        if self.update_rule == "ema":
            # 3. m_k <- gamma m_k + (1 - gamma) sum_j z_j (eq. 7); e_k <- m_k / N_k (eq. 8), with Laplace smoothing
            #    of N_k so empty clusters do not divide by zero (as in RQ-VAE and Sonnet).
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + K * self.eps) * n
            embed = self.embed_sum / smoothed[:, None]
            self.embed.copy_(F.normalize(embed, dim=-1) if self.l2_normalize else embed)
        # 4. Restart dead codes (EMA count below the threshold) from random vectors of this batch (RQ-VAE).
        if self.restart_threshold > 0:
            self.restart(z)

    @torch.no_grad()
    def restart(self, z: torch.Tensor) -> int:
        """Replace every code whose EMA count is below ``restart_threshold`` by a random row of z [N, C]."""
        dead = self.cluster_size < self.restart_threshold
        num_dead = int(dead.sum())
        if num_dead == 0:
            return 0
        N = z.shape[0]
        if N >= num_dead:
            picked = z[torch.randperm(N, device=z.device)[:num_dead]]
        else:  # too few vectors: draw with replacement and jitter the copies apart
            picked = z[torch.randint(0, N, (num_dead,), device=z.device)]
            picked = picked + (torch.rand_like(picked) - 0.5) * (0.02 / math.sqrt(self.dim))
        picked = self.normalize(picked)
        if _distributed():
            dist.broadcast(picked, src=0)
        self.embed.data[dead] = picked.to(self.embed.dtype)
        self.cluster_size[dead] = self.restart_threshold
        if self.update_rule == "ema":
            self.embed_sum[dead] = picked * self.restart_threshold
        log.debug("restarted %d of %d codes", num_dead, self.num_codes)
        return num_dead


def _draw_rows(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of probs [N, K] by inverse CDF: long [N]. The uniforms come from the CPU generator (torch's
    global one when None), whose state the trainer checkpoints, so a resumed run repeats them on any device."""
    cdf = probs.double().cumsum(dim=-1)  # [N, K]
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64).to(probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)


@torch.no_grad()
def code_distances(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances of rows z [N, C] to codes [K, C] up to a per-row constant: [N, K].

    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code of a row and dropped."""
    return codes.pow(2).sum(-1)[None, :] - 2.0 * z @ codes.t()


def soft_residual_codes(
    z: torch.Tensor,
    codes: torch.Tensor,
    depth: int,
    temperature: float,
    *,
    stochastic: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual quantization with soft targets: latents z [..., C], code vectors [K, C] -> (ids long [..., D],
    q float [..., D, K]).

    Depth by depth, q_d(k) = softmax_k(-||r_{d-1} - e_k||^2 / temperature) with r_0 = z (raw squared distances, so
    the temperature depends on the latent's scale); k_d is the argmin (``stochastic=False``, the ids of the greedy
    quantizer) or a draw from q_d (``stochastic=True``), and r_d = r_{d-1} - e_{k_d} uses that code. The soft-label
    recipe of the RQ-Transformer configs (Kim et al. 2022): the ids are the generator's inputs, q its targets.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    e = codes.float()
    residual = z.reshape(-1, z.shape[-1]).float()  # r_0, [N, C]
    ids, probs = [], []
    for _ in range(depth):
        # the per-row constant ||r||^2 changes neither the argmin nor the softmax; the distances of
        # Codebook.nearest, so the argmin ids agree exactly
        dist_ = code_distances(residual, e)  # [N, K]
        q = (-dist_ / temperature).softmax(dim=-1)
        k = _draw_rows(q, generator) if stochastic else dist_.argmin(dim=-1)
        residual = residual - e[k]
        ids.append(k)
        probs.append(q)
    lead = z.shape[:-1]
    return torch.stack(ids, -1).reshape(*lead, depth), torch.stack(probs, -2).reshape(*lead, depth, e.shape[0])
