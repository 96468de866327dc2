"""Small named schedules shared by the generators: MAR's mask ratio and masking schedule, and the CFG ramp.

- :func:`mask_ratio_truncnorm`: training mask ratio of MAR (arXiv 2406.11838, Sec. 3.3): a normal centred at
  1.0 with sd 0.25, truncated to [0.7, 1.0], one draw per batch.
- :func:`tokens_to_keep_masked`: MAR's cosine schedule (following MaskGIT, arXiv 2202.04200) of how many
  tokens stay masked after each of ``steps`` generation steps.
- :func:`cfg_at`: classifier-free guidance scale at a point of generation; ``linear`` follows Muse
  (arXiv 2301.00704) and MAR: w = 1 + (cfg - 1) * (fraction of tokens generated).

Deviations:
- The truncated normal is drawn by inverse CDF from a ``torch.Generator`` (MAR uses scipy's global RNG).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from benchkit.core.config import CFG_SCHEDULES
from benchkit.core.errors import ConfigError


def mask_ratio_truncnorm(
    generator: torch.Generator | None = None,
    *,
    low: float = 0.7,
    high: float = 1.0,
    mean: float = 1.0,
    std: float = 0.25,
) -> float:
    """One mask ratio from N(mean, std^2) truncated to [low, high] (MAR: mean 0.867, sd 0.084)."""
    assert low < high and std > 0, f"bad truncated normal: [{low}, {high}], std {std}"
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((), generator=generator, device=device).double()
    a = torch.special.ndtr(torch.tensor((low - mean) / std, dtype=torch.float64, device=device))
    b = torch.special.ndtr(torch.tensor((high - mean) / std, dtype=torch.float64, device=device))
    r = mean + std * torch.special.ndtri(a + u * (b - a))  # inverse CDF of the truncated normal
    return float(r.clamp(low, high))


def tokens_to_keep_masked(L: int, step: int, steps: int) -> int:
    """How many of ``L`` tokens are still masked after generation step ``step`` (0-based) of ``steps``.

    MAR's rule: m_k = floor(L * cos(pi/2 * (k+1)/K)), clamped to [1, masked_before - 1] so every step but the
    last predicts at least one token and leaves at least one; the last step predicts all that remain.
    """
    assert 0 <= step < steps, f"step {step} outside [0, {steps})"
    masked = L
    for k in range(step + 1):
        if k == steps - 1:
            return 0
        m = math.floor(L * math.cos(math.pi / 2 * (k + 1) / steps))
        masked = max(1, min(masked - 1, m))
    return masked


def _constant(cfg: float, progress: float) -> float:
    return cfg


def _linear(cfg: float, progress: float) -> float:
    return 1.0 + (cfg - 1.0) * progress


_RAMPS: dict[str, Callable[[float, float], float]] = {"constant": _constant, "linear": _linear}
assert tuple(_RAMPS) == CFG_SCHEDULES, "every schedule named in benchkit.core.config.CfgSchedule needs a formula here"


def cfg_at(cfg: float, schedule: str, progress: float) -> float:
    """Guidance scale when a fraction ``progress`` of the tokens is generated (after the current step)."""
    if schedule not in _RAMPS:
        raise ConfigError(f"unknown cfg_schedule {schedule!r}; valid: {', '.join(CFG_SCHEDULES)}")
    return _RAMPS[schedule](cfg, progress)
