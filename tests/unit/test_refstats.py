"""FID against stored reference statistics (.npz with mu and sigma) and streamed sample features."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchkit.core.errors import ConfigError
from benchkit.metrics import frechet, quality
from benchkit.metrics.features import load_extractor
from benchkit.metrics.refstats import (
    FeatureMoments,
    fid_from_stats,
    load_reference_stats,
    save_reference_stats,
    streamed_fid,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_metrics import TINY, _stripes_and_disks  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("refstats")
    train, test = _stripes_and_disks(300, 0, "train"), _stripes_and_disks(150, 1, "test")
    return train, test, load_extractor("dataset", train_data=train, cache_dir=cache, device=CPU, options=TINY), cache


def test_fid_from_saved_statistics_equals_fid_from_the_images(setup, tmp_path: Path) -> None:
    train, test, extractor, cache = setup
    fake = train.images[:150]
    from_images = quality.generation_metrics(
        fake, test.images, extractor, cache_dir=cache, ref_key="rs", prc=False, device=CPU
    )
    path = save_reference_stats(test.images, extractor, tmp_path / "ref.npz", batch_size=64)
    mu, sigma = load_reference_stats(path)
    ref_mu, ref_sigma = frechet.feature_stats(extractor.features(test.images))
    assert np.allclose(mu, ref_mu, atol=1e-9) and np.allclose(sigma, ref_sigma, atol=1e-9)
    from_file = fid_from_stats(*frechet.feature_stats(extractor.features(fake)), mu, sigma)
    assert from_file["fid"] == pytest.approx(float(from_images["fid"]), rel=1e-6) and from_file["fid"] > 0
    assert from_file["fid_cleanfid"] == pytest.approx(from_file["fid"], rel=1e-4)
    # streamed: chunks of 40 generated one after another give the same statistics as all images at once
    calls = []

    def make(labels: torch.Tensor, seed: int) -> torch.Tensor:
        calls.append(len(labels))
        start = sum(calls[:-1])
        return fake[start : start + len(labels)]

    streamed = streamed_fid(make, torch.zeros(150, dtype=torch.long), extractor, path, chunk=40, seed=0)
    assert calls == [40, 40, 40, 30] and streamed["n_samples"] == 150
    assert streamed["fid"] == pytest.approx(from_file["fid"], rel=1e-6)


def test_moments_match_numpy_cov() -> None:
    f = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    m = FeatureMoments(6)
    for part in f.split(7):
        m.update(part)
    mu, sigma = m.stats()
    assert np.allclose(mu, f.double().mean(0).numpy()) and np.allclose(sigma, np.cov(f.double().numpy(), rowvar=False))


def test_bad_reference_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_reference_stats(tmp_path / "missing.npz")
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 4, 4, 3)))
    with pytest.raises(ConfigError, match="must hold arrays 'mu' and 'sigma'; found: arr_0"):
        load_reference_stats(tmp_path / "adm.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.zeros((2, 2)))
    with pytest.raises(ConfigError, match=r"mu must be \[D\] and sigma \[D, D\]"):
        load_reference_stats(tmp_path / "shape.npz")
    from benchkit.core.config import resolve
    from benchkit.training.checks import check_eval

    with pytest.raises(ConfigError, match="eval.reference_stats"):
        check_eval(resolve("tiny", overrides=[f'eval.reference_stats="{tmp_path / "missing.npz"}"']))
