"""Frechet distances on feature statistics: FID of two Gaussians, FID against one fixed reference for many subsets
(the bootstrap spread and FID-infinity), and FID-infinity itself (Chong & Forsyth 2020, arXiv 1911.07023: FID is
biased in 1/N; fit FID_N = a + b/N over several subset sizes and report the intercept a)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from benchkit.core.errors import ConfigError


def feature_stats(feats: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D,D] of features [N,D], both float64."""
    f = feats.double().numpy() if torch.is_tensor(feats) else np.asarray(feats, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID between two Gaussians; Tr (S1 S2)^(1/2) as the sum of square roots of the eigenvalues of S1 S2."""
    diff = mu1 - mu2
    eig = np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)
    tr_covmean = float(np.sqrt(eig).real.sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


class FidToReference:
    """FID of many feature sets against one fixed reference (mu, sigma): Tr (S R)^(1/2) as the sum of square roots
    of the eigenvalues of the symmetric R^(1/2) S R^(1/2), R^(1/2) computed once. The same value as
    :func:`frechet_distance` up to rounding (negative eigenvalues of a singular S are taken as 0, as the real part
    of their complex square root is there), at a fraction of its cost: ``eigvalsh`` of a symmetric matrix instead
    of the general ``eigvals``, for the bootstrap and FID-infinity, which score many subsets."""

    def __init__(self, ref_mu: np.ndarray, ref_sigma: np.ndarray) -> None:
        self.mu = np.asarray(ref_mu, dtype=np.float64)
        self.sigma = np.asarray(ref_sigma, dtype=np.float64)
        w, v = np.linalg.eigh(self.sigma)
        self.root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        self.trace = float(np.trace(self.sigma))

    def __call__(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        diff = mu - self.mu
        eig = np.linalg.eigvalsh(self.root @ sigma @ self.root)
        tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
        return float(diff @ diff + np.trace(sigma) + self.trace - 2.0 * tr_covmean)


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets [N,D] and [M,D]."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


class FIDInfinity(NamedTuple):
    """Extrapolated FID: ``fid_inf`` is the intercept of FID_N = fid_inf + slope / N over subset sizes ``ns``."""

    fid_inf: float
    slope: float
    ns: tuple[int, ...]
    fids: tuple[float, ...]


def fid_infinity(
    fake_feats: torch.Tensor,
    ref_mu: np.ndarray,
    ref_sigma: np.ndarray,
    *,
    num_points: int = 15,
    min_n: int | None = None,
    seed: int = 0,
) -> FIDInfinity:
    """FID-infinity of Chong & Forsyth (2020, Sec. 3.1) against fixed reference statistics.

    The reference term of the bias (c / N_ref) stays in the intercept: compare FID-infinity only at equal N_ref.
    """
    n = len(fake_feats)
    min_n = max(2, n // 5) if min_n is None else min_n
    # 1. subset sizes N_i spaced linearly in [min_n, N] (the paper: 15 points from 5k to 50k)
    ns = tuple(sorted({int(round(v)) for v in np.linspace(min_n, n, num_points)}))
    if len(ns) < 2 or ns[0] < 2:
        raise ValueError(f"fid_infinity needs at least two subset sizes >= 2; got {ns} from {n} samples")
    rng = np.random.default_rng(seed)
    feats = fake_feats.double().numpy()
    fid_to_ref = FidToReference(ref_mu, ref_sigma)
    fids = []
    for size in ns:
        # 2. FID of a random subset of size N_i against the fixed reference statistics
        sub = feats[rng.permutation(n)[:size]]
        fids.append(fid_to_ref(*feature_stats(sub)))
    # 3. least squares FID_i = a + b / N_i; FID-infinity is a, the value at 1/N -> 0
    slope, intercept = np.polyfit(1.0 / np.asarray(ns, dtype=np.float64), np.asarray(fids), 1)
    return FIDInfinity(float(intercept), float(slope), ns, tuple(fids))


def bootstrap_fid_std(
    fake_feats: torch.Tensor | np.ndarray, ref_mu: np.ndarray, ref_sigma: np.ndarray, *, rounds: int = 20, seed: int = 0
) -> float:
    """Standard deviation of FID over ``rounds`` resamplings (with replacement) of the generated features."""
    feats = np.asarray(
        fake_feats.detach().cpu().numpy() if isinstance(fake_feats, torch.Tensor) else fake_feats, dtype=np.float64
    )
    if feats.ndim != 2 or len(feats) < 2:
        raise ConfigError(f"fake_feats must be [N >= 2, D], got shape {feats.shape}")
    if rounds < 2:
        raise ConfigError(f"rounds must be >= 2, got {rounds}")
    rng = np.random.default_rng(seed)
    fid_to_ref = FidToReference(ref_mu, ref_sigma)
    fids = [fid_to_ref(*feature_stats(feats[rng.integers(0, len(feats), len(feats))])) for _ in range(rounds)]
    return float(np.std(fids, ddof=1))
