"""Conditioning blocks shared by every family: sinusoidal timestep embedding and adaLN modulation.

The timestep embedding follows DiT (Peebles & Xie, arXiv 2212.09748) as used by MAR's Diffusion Loss MLP
(Li et al., arXiv 2406.11838; https://github.com/LTH14/mar at fe470ac): a fixed sinusoidal feature of the
integer timestep (first half cosines, second half sines, geometric frequencies down to 1/max_period), then a
two-layer SiLU MLP.

Deviations:
- none in the computation; the parameter names differ from the official ``TimestepEmbedder`` (``mlp.0`` and
  ``mlp.2`` keep the same indices, so a key map only renames the prefix).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoidal features of (possibly fractional) timesteps: t [N] -> float [N, dim] as [cos | sin]."""
    half = dim // 2
    # freqs_i = max_period^(-i/half), i = 0..half-1 (Transformer / DiT frequency ladder)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # [N, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [N, 2*half]
    if dim % 2:  # odd width: pad one zero column so the output is exactly ``dim`` wide
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift; shift/scale broadcast against x (for x [B, L, D] pass [B, 1, D])."""
    return x * (1 + scale) + shift


class TimestepEmbedding(nn.Module):
    """Integer timestep -> width-D vector: sinusoidal features, Linear, SiLU, Linear (DiT / MAR)."""

    def __init__(self, width: int, freq_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        for layer in (self.mlp[0], self.mlp[2]):  # DiT / MAR init: N(0, 0.02) weights, zero bias
            assert isinstance(layer, nn.Linear)
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [N] (long or float) -> [N, width]."""
        return self.mlp(sinusoidal_embedding(t, self.freq_dim, self.max_period))
