"""Sample health: whether a generator's sampled tokens are numerically meaningful at all, judged against the
training tokens, so that a row whose sampling diverged or collapsed is marked instead of entering the table as a
(very bad, or deceptively good) number.

Two pieces:

- :class:`TokenReference`, from a few hundred training images' tokens (:func:`token_reference`): per channel the
  mean, standard deviation and a robust range (the ``RANGE_QUANTILES``) of continuous tokens, the id histogram of
  discrete ones. A channel is one value of a grid position: C for [B, h, w, C], D x C for RQ's [B, h, w, D, C].
- :class:`SampleHealth`, an accumulator that ``benchkit.sampling.generate.generate_images`` updates with each
  batch of SAMPLED tokens before decoding (``update_tokens``) and with the batch's images after
  (``update_images``). It keeps running sums only (plus one 8-byte hash per sample for the distinct count), so a
  streamed evaluation never holds its samples; ``all_reduce`` adds up the ranks of a torchrun job.

Its :meth:`SampleHealth.summary` gives the figures and a verdict:

- ``token_nonfinite``: share of sampled values that are NaN or infinite.
- ``token_std_ratio_max`` / ``token_std_ratio_min``: sampled std / training std per channel, the largest and
  smallest over channels (continuous tokens only). Both stds are floored at ``STD_FLOOR`` x the median training
  std, so a channel that is nearly constant in training (a VQ code dimension the codebook barely uses) reads 1
  when the samples keep it nearly constant too, instead of an arbitrary ratio of two tiny numbers.
- ``token_out_of_range``: share of sampled values outside the training range (NaN counts as outside): the
  ``RANGE_QUANTILES`` range widened by ``RANGE_MARGIN`` of its width on either side, so that only values clearly off
  the data's support count, not those of a sampler that is merely too wide. For discrete tokens: share of sampled
  ids the training tokens never use; reported, not judged, since an undertrained cross-entropy head still spreads
  some mass over unused codes and the decoder accepts every id.
- ``sample_distinct``: distinct samples / samples: id sequences for discrete tokens, continuous tokens rounded to
  ``DISTINCT_STEP`` training stds.
- ``sample_pixel_std``: per-pixel standard deviation across the sampled images (uint8 levels), averaged over
  pixels; near 0 when every image is the same.

Verdict (``health``), diverged first:

- ``diverged``: any non-finite value (``NONFINITE_MAX``), a channel's std ratio above ``DIVERGED_STD_RATIO``, or
  more than ``OUT_OF_RANGE_MAX`` of the values beyond the (widened) training range (continuous).
- ``collapsed``: a channel's std ratio below ``COLLAPSED_STD_RATIO`` (continuous), a single distinct sample among
  several or a share of distinct samples below ``DISTINCT_MIN``, or images whose mean per-pixel std is below
  ``PIXEL_STD_MIN``.
- ``ok`` otherwise; ``unchecked`` when the accumulator saw no sample (nothing went through ``generate_images``).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from benchkit.core import distributed as bdist

log = logging.getLogger(__name__)

# --- thresholds -------------------------------------------------------------------------------------------------
REFERENCE_IMAGES = 512  # training images whose tokens make the reference: quantiles of 0.1% need a few hundred
RANGE_QUANTILES = (0.001, 0.999)  # the training range per channel: robust to the few extreme latents
# The range is widened by this fraction of its width on each side (+-6.2 stds for Gaussian tokens) before values are
# counted as outside it. An undertrained MAR + Diffusion Loss (48 steps at tiny, samples 2-3x the training std, a
# bounded spread) puts 46% of its values outside the bare quantile range but none outside the widened one: a weak
# model, not a meaningless one.
RANGE_MARGIN = 0.5
# A Gaussian at 10x the training std is hopeless for any decoder (MAR's diverged Diffusion Loss: ~2800x); a
# temperature or CFG scale that is merely too high stays well below (temperature 1.5 gives ~1.5x).
DIVERGED_STD_RATIO = 10.0
# The mirror image: samples at a tenth of the training spread on some channel have lost that channel.
COLLAPSED_STD_RATIO = 0.1
# 10% outside the widened range is what a Gaussian at ~3.7x the training std or one shifted by ~5 stds gives (a
# matched one: ~1e-9); heavy tails reach it at a lower std ratio. Temperature and CFG stay far below.
OUT_OF_RANGE_MAX = 0.1
NONFINITE_MAX = 0.0  # any NaN or inf: the decoder's output is then undefined
# Fewer distinct samples than one in four: each repeated four times on average. Real samplers at temperature > 0
# essentially never repeat a whole token grid; greedy decoding (one sample per class) falls below it.
DISTINCT_MIN = 0.25
DISTINCT_STEP = 0.01  # continuous samples closer than this many training stds in every value count as one
PIXEL_STD_MIN = 2.0  # uint8 levels; natural image sets have 40-80, a generator repeating one image ~0
STD_FLOOR = 0.01  # fraction of the median training std below which a channel's std counts as this floor

OK, DIVERGED, COLLAPSED, UNCHECKED = "ok", "diverged", "collapsed", "unchecked"
VERDICTS = (OK, DIVERGED, COLLAPSED, UNCHECKED)
FAILING = (DIVERGED, COLLAPSED)
_BIG = 1e12  # non-finite and huge values are clipped to this before rounding for the distinct count


def is_failing(verdict: Any) -> bool:
    """Whether a row's ``health`` value marks it as failed (``diverged`` / ``collapsed``)."""
    return isinstance(verdict, str) and verdict in FAILING


def _is_continuous(tokens: torch.Tensor) -> bool:
    return bool(tokens.is_floating_point())


def _or_zeros(t: torch.Tensor | None, n: int) -> torch.Tensor:
    return t if t is not None and n else torch.zeros(n, dtype=torch.float64)


def _channels(tokens: torch.Tensor) -> int:
    """Values per grid position of continuous tokens [B, h, w, ...]: the product of the dims after the grid."""
    return math.prod(tokens.shape[3:]) if tokens.dim() > 3 else 1


@dataclass(frozen=True)
class TokenReference:
    """Statistics of training tokens: per channel (continuous) or the id histogram (discrete)."""

    kind: str  # "continuous" or "discrete"
    n_samples: int
    token_shape: tuple[int, ...]  # one sample's tokens
    mean: torch.Tensor | None = None  # [channels] float64
    std: torch.Tensor | None = None
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None
    id_counts: torch.Tensor | None = None  # [max id + 1] int64

    @property
    def channels(self) -> int:
        return len(self.mean) if self.mean is not None else 0


def token_reference(tokens: torch.Tensor, max_values: int = 1 << 23) -> TokenReference:
    """The reference of training tokens [N, h, w, ...] (ids or continuous values). Quantiles are taken over at most
    ``max_values`` values (evenly strided rows), the rest over all of them."""
    if len(tokens) == 0:
        raise ValueError("a token reference needs at least one training sample")
    shape = tuple(tokens.shape[1:])
    if not _is_continuous(tokens):
        ids = tokens.detach().to("cpu", torch.int64).flatten()
        if ids.min() < 0:
            raise ValueError("token ids must be non-negative")
        return TokenReference("discrete", len(tokens), shape, id_counts=torch.bincount(ids))
    c = _channels(tokens)
    vals = tokens.detach().to("cpu", torch.float64).reshape(-1, c)
    vals = vals[torch.isfinite(vals).all(1)]
    if len(vals) < 2:
        raise ValueError("a token reference needs at least two finite training token rows")
    stride = max(1, (len(vals) * c) // max_values)
    q = torch.quantile(vals[::stride], torch.tensor(RANGE_QUANTILES, dtype=torch.float64), dim=0)
    return TokenReference("continuous", len(tokens), shape, mean=vals.mean(0), std=vals.std(0), low=q[0], high=q[1])


@dataclass(frozen=True)
class HealthSummary:
    """The health figures of a set of samples and their verdict (None: not measurable here)."""

    health: str
    health_reason: str | None
    token_nonfinite: float | None
    token_std_ratio_max: float | None
    token_std_ratio_min: float | None
    token_out_of_range: float | None
    sample_distinct: float | None
    sample_pixel_std: float | None

    @property
    def failed(self) -> bool:
        return is_failing(self.health)

    def row(self) -> dict[str, Any]:
        """The fields a results row carries."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class SampleHealth:
    """Streamed health figures of sampled tokens (and their images) against a :class:`TokenReference`.

    Without a reference only what needs none is measured: non-finite values, distinct samples, image spread.
    The updates only read their arguments (they work on float64 copies), so the images decoded from the same tokens
    are bit-identical with or without an accumulator.
    """

    def __init__(self, reference: TokenReference | None = None) -> None:
        self.reference = reference
        self.samples = self.values = self.nonfinite = self.outside = self.images = 0
        self.continuous: bool | None = None
        self.ch_n: torch.Tensor | None = None  # per channel: finite count, sum and sum of squares (shifted)
        self.ch_sum: torch.Tensor | None = None
        self.ch_sq: torch.Tensor | None = None
        self.px_sum: torch.Tensor | None = None  # per pixel over images
        self.px_sq: torch.Tensor | None = None
        self.keys: set[int] = set()

    # ------------------------------------------------------------------------------------------------ updates
    def _check_reference(self, tokens: torch.Tensor) -> None:
        ref = self.reference
        if ref is None:
            return
        if tuple(tokens.shape[1:]) != ref.token_shape or (ref.kind == "continuous") != _is_continuous(tokens):
            log.warning(
                "sample health: sampled tokens %s do not match the training reference %s (%s); judging without it",
                tuple(tokens.shape[1:]),
                ref.token_shape,
                ref.kind,
            )
            self.reference = None

    def update_tokens(self, tokens: torch.Tensor) -> None:
        """Add a batch of sampled tokens [B, h, w, ...] (ids or continuous values), before decoding."""
        if len(tokens) == 0:
            return
        self._check_reference(tokens)
        self.continuous = _is_continuous(tokens)
        b = len(tokens)
        self.samples += b
        if self.continuous:
            x = tokens.detach().to("cpu", torch.float64, copy=True)
            self._continuous(x.reshape(b, -1, _channels(x)))
        else:
            self._discrete(tokens.detach().to("cpu", torch.int64, copy=True).reshape(b, -1))

    def _continuous(self, x: torch.Tensor) -> None:
        """x: [B, positions, channels] float64."""
        ref, c = self.reference, x.shape[-1]
        mean = ref.mean if ref is not None and ref.mean is not None else torch.zeros(c, dtype=torch.float64)
        std = ref.std if ref is not None and ref.std is not None else torch.ones(c, dtype=torch.float64)
        vals = x.reshape(-1, c)
        finite = torch.isfinite(vals)
        self.values += vals.numel()
        self.nonfinite += int((~finite).sum())
        y = torch.where(finite, vals - mean, torch.zeros((), dtype=torch.float64))
        if self.ch_n is None or self.ch_sum is None or self.ch_sq is None:
            self.ch_n, self.ch_sum, self.ch_sq = (torch.zeros(c, dtype=torch.float64) for _ in range(3))
        self.ch_n += finite.sum(0)
        self.ch_sum += y.sum(0)
        self.ch_sq += (y * y).sum(0)
        if ref is not None and ref.low is not None and ref.high is not None:
            margin = RANGE_MARGIN * (ref.high - ref.low)
            self.outside += int((~((vals >= ref.low - margin) & (vals <= ref.high + margin))).sum())
        scaled = torch.nan_to_num(x / std.clamp_min(1e-12), nan=0.0, posinf=_BIG, neginf=-_BIG).clamp(-_BIG, _BIG)
        self._hash(torch.round(scaled / DISTINCT_STEP).to(torch.int64).reshape(len(x), -1))

    def _discrete(self, ids: torch.Tensor) -> None:
        """ids: [B, values] int64."""
        self.values += ids.numel()
        ref = self.reference
        if ref is not None and ref.id_counts is not None:
            counts = ref.id_counts
            inside = (ids >= 0) & (ids < len(counts))
            seen = torch.zeros_like(inside)
            seen[inside] = counts[ids[inside]] > 0
            self.outside += int((~seen).sum())
        self._hash(ids)

    def _hash(self, rows: torch.Tensor) -> None:
        """One stable 8-byte hash per sample (the same on every rank, unlike Python's ``hash``)."""
        for row in rows.contiguous().numpy():
            digest = hashlib.blake2b(row.tobytes(), digest_size=8).digest()
            self.keys.add(int.from_bytes(digest, "little", signed=True))

    def update_images(self, images: torch.Tensor) -> None:
        """Add a batch of the sampled images [B, 3, H, W] (uint8), after decoding."""
        if len(images) == 0:
            return
        x = images.detach().to("cpu", torch.float64, copy=True).reshape(len(images), -1)
        if self.px_sum is None or self.px_sq is None:
            self.px_sum, self.px_sq = (torch.zeros(x.shape[1], dtype=torch.float64) for _ in range(2))
        self.images += len(x)
        self.px_sum += x.sum(0)
        self.px_sq += (x * x).sum(0)

    # ------------------------------------------------------------------------------------------------- ranks
    def all_reduce(self) -> None:
        """Add up the accumulators of every rank (every rank must call; a no-op outside torchrun)."""
        if bdist.world_size() == 1:
            return
        c = len(self.ch_n) if self.ch_n is not None else 0
        p = len(self.px_sum) if self.px_sum is not None else 0
        c, p, continuous = bdist.broadcast_object((c, p, self.continuous))  # rank 0 always has a batch
        counts = [self.samples, self.values, self.nonfinite, self.outside, self.images]
        parts = [
            torch.tensor(counts, dtype=torch.float64),
            *(_or_zeros(t, c) for t in (self.ch_n, self.ch_sum, self.ch_sq)),
            *(_or_zeros(t, p) for t in (self.px_sum, self.px_sq)),
        ]
        summed = bdist.gather_cat(torch.cat(parts)[None]).sum(0)
        rest = summed[5:]
        self.samples, self.values, self.nonfinite, self.outside, self.images = (int(v) for v in summed[:5].tolist())
        self.continuous = continuous
        if c:
            self.ch_n, self.ch_sum, self.ch_sq = rest[:c], rest[c : 2 * c], rest[2 * c : 3 * c]
        if p:
            self.px_sum, self.px_sq = rest[3 * c : 3 * c + p], rest[3 * c + p :]
        mine = torch.tensor(sorted(self.keys), dtype=torch.int64)
        lengths = [int(n) for n in bdist.gather_cat(torch.tensor([len(mine)])).tolist()]
        padded = torch.zeros(max(lengths), dtype=torch.int64)
        padded[: len(mine)] = mine
        gathered = bdist.gather_cat(padded[None])
        self.keys = {int(k) for row, n in zip(gathered, lengths) for k in row[:n].tolist()}

    # ------------------------------------------------------------------------------------------------ summary
    def _std_ratios(self) -> tuple[float | None, float | None]:
        ref = self.reference
        if ref is None or ref.std is None or self.ch_n is None or self.ch_sum is None or self.ch_sq is None:
            return None, None
        n = self.ch_n
        usable = n >= 2
        if not bool(usable.any()):
            return None, None
        var = (self.ch_sq - self.ch_sum**2 / n.clamp_min(1)) / (n - 1).clamp_min(1)
        sampled = var.clamp_min(0).sqrt()
        floor = STD_FLOOR * float(ref.std.median())
        ratio = (sampled.clamp_min(floor) / ref.std.clamp_min(floor))[usable]
        if floor == 0:  # a training reference without any spread: ratios only where both are positive
            ratio = ratio[torch.isfinite(ratio)]
            if len(ratio) == 0:
                return None, None
        return float(ratio.max()), float(ratio.min())

    def _pixel_std(self) -> float | None:
        if self.images < 2 or self.px_sum is None or self.px_sq is None:
            return None
        var = (self.px_sq - self.px_sum**2 / self.images) / (self.images - 1)
        return float(var.clamp_min(0).sqrt().mean())

    def summary(self) -> HealthSummary:
        """The figures and the verdict of everything added so far (after ``all_reduce`` under torchrun)."""
        nonfinite = self.nonfinite / self.values if self.values else None
        ratio_max, ratio_min = self._std_ratios() if self.continuous else (None, None)
        outside = self.outside / self.values if self.values and self.reference is not None else None
        distinct = len(self.keys) / self.samples if self.samples else None
        pixel_std = self._pixel_std()
        diverged, collapsed = [], []
        if nonfinite is not None and nonfinite > NONFINITE_MAX:
            diverged.append(f"{self.nonfinite} of {self.values} token values not finite")
        if ratio_max is not None and ratio_max > DIVERGED_STD_RATIO:
            diverged.append(f"token std {ratio_max:.3g}x the training std (> {DIVERGED_STD_RATIO:g}x)")
        if self.continuous and outside is not None and outside > OUT_OF_RANGE_MAX:
            diverged.append(f"{outside:.1%} of the token values beyond the training range (> {OUT_OF_RANGE_MAX:.0%})")
        if ratio_min is not None and ratio_min < COLLAPSED_STD_RATIO:
            collapsed.append(f"token std {ratio_min:.3g}x the training std (< {COLLAPSED_STD_RATIO:g}x)")
        if distinct is not None and self.samples >= 2 and (len(self.keys) == 1 or distinct < DISTINCT_MIN):
            collapsed.append(f"{len(self.keys)} distinct of {self.samples} samples")
        if pixel_std is not None and pixel_std < PIXEL_STD_MIN:
            collapsed.append(f"images nearly constant (per-pixel std {pixel_std:.3g} < {PIXEL_STD_MIN:g})")
        if not self.samples and not self.images:
            verdict, reasons = UNCHECKED, ["no samples seen"]
        else:
            verdict, reasons = (DIVERGED, diverged) if diverged else (COLLAPSED, collapsed) if collapsed else (OK, [])
        return HealthSummary(
            health=verdict,
            health_reason="; ".join(reasons) or None,
            token_nonfinite=nonfinite,
            token_std_ratio_max=ratio_max,
            token_std_ratio_min=ratio_min,
            token_out_of_range=outside,
            sample_distinct=distinct,
            sample_pixel_std=pixel_std,
        )
