"""Degenerate feature statistics: the two FID libraries are reported consistently, never a silent NaN beside a
number, and a feature block that does not vary on the training images cannot blow the features up."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from benchkit.metrics import frechet, quality
from benchkit.metrics.featurenet import FEATURE_SCALE, MIN_BLOCK_VARIANCE, DatasetFeatureNet, to_float
from benchkit.metrics.refstats import fid_from_stats


def _stats(seed: int, n: int = 300, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    return frechet.feature_stats(np.random.default_rng(seed).standard_normal((n, d)))


def test_sane_statistics_agree_and_carry_no_mark(caplog: pytest.LogCaptureFixture) -> None:
    out = fid_from_stats(*_stats(0), *_stats(1))
    assert "fid_invalid" not in out and out["fid_rel_diff"] < 1e-6
    assert out["fid_cleanfid"] == pytest.approx(out["fid"], rel=1e-6)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_failed_square_root_marks_the_row_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    # a "covariance" with a negative eigenvalue: scipy's sqrtm returns an imaginary part far above clean-fid's
    # absolute tolerance, which is what a covariance of features scaled to 1e5 gives after rounding
    mu, sigma = np.zeros(2), np.eye(2)
    bad = np.diag([-4.0, 1.0])
    with caplog.at_level(logging.WARNING):
        out = fid_from_stats(mu, sigma, mu, bad)
    assert math.isnan(float(out["fid_cleanfid"]))
    assert "Imaginary component" in str(out["fid_invalid"]) and "ill-conditioned" in str(out["fid_invalid"])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "FID not valid" in warnings[0].getMessage()


def test_disagreement_and_non_finite_values_are_marked() -> None:
    assert "disagree" in str(quality.compare_fids(100.0, (101.0, ""))["fid_invalid"])
    assert "non-finite" in str(quality.compare_fids(float("nan"), (5.0, ""))["fid_invalid"])
    assert "fid_invalid" not in quality.compare_fids(100.0, (100.00001, ""))
    reason = quality.compare_fids(7.0, (float("nan"), "clean-fid failed (x)"))["fid_invalid"]
    assert reason == "clean-fid failed (x)"


def test_constant_block_is_scaled_by_the_floor(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    net = DatasetFeatureNet(width=4, num_classes=2).eval()
    # every image the same left-to-right ramp in a different flat tint: the edge block never varies
    ramp = torch.linspace(0, 255, 16).round().to(torch.uint8)
    images = ramp.view(1, 1, 1, 16).repeat(12, 3, 16, 1)
    images[:, 1] = (torch.arange(12) * 20).to(torch.uint8).view(12, 1, 1)
    weights = {"colour": 1.0, "edges": 1.0, "cnn": 1.0}
    with caplog.at_level(logging.WARNING):
        net.fit_standardisation(images, weights)
    edges = net.blocks["edges"]
    assert float(net.scale[edges].max()) == pytest.approx(FEATURE_SCALE / MIN_BLOCK_VARIANCE**0.5, rel=1e-5)
    assert any("'edges' barely varies" in r.getMessage() for r in caplog.records)
    # an image with other edges moves the features by a bounded amount, not by 1e5
    other = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    other[..., ::2] = 255
    with torch.no_grad():
        feats, _ = net(to_float(other))
    assert torch.isfinite(feats).all() and float(feats.abs().max()) < 1e4
