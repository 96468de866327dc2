"""Quality metrics (torch-fidelity vs clean-fid, reference cache, FID-infinity), recon and cost."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from benchkit.data.base import ImageData
from benchkit.metrics import cost, frechet, quality, recon
from benchkit.metrics.features import load_extractor

CPU = torch.device("cpu")
TINY = {"width": 8, "steps": 40, "batch_size": 64, "lr": 5e-3}


def _stripes_and_disks(n: int, seed: int, split: str, size: int = 16) -> ImageData:
    """Three classes (horizontal stripes, vertical stripes, disk) with random colours, phase, position and noise."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 3)[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    period, phase = torch.randint(3, 6, (n, 1, 1), generator=g), torch.randint(0, 6, (n, 1, 1), generator=g)
    cy, cx = torch.randint(5, size - 5, (2, n, 1, 1), generator=g)
    r2 = torch.randint(3, 5, (n, 1, 1), generator=g) ** 2
    kinds = torch.stack(
        [(yy + phase) % period < period / 2, (xx + phase) % period < period / 2, (yy - cy) ** 2 + (xx - cx) ** 2 < r2]
    )
    mask = kinds[labels, torch.arange(n)][:, None].float()
    fg, bg = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g), 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    x = (bg + (fg - bg) * mask + 0.05 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return ImageData("stripes", split, x.mul(255).round().to(torch.uint8), labels, ("h", "v", "disk"))


@pytest.fixture(scope="module")
def data() -> tuple[ImageData, ImageData]:
    return _stripes_and_disks(300, 0, "train"), _stripes_and_disks(150, 1, "test")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bk_metrics_cache")


@pytest.fixture(scope="module")
def extractor(data: tuple[ImageData, ImageData], cache: Path):
    return load_extractor("dataset", train_data=data[0], cache_dir=cache, device=CPU, options=TINY)


# ---------------------------------------------------------------------------------------------- quality


def test_fidelity_and_cleanfid_agree(data: tuple[ImageData, ImageData], extractor, cache: Path) -> None:
    train, test = data
    fake, labels = train.images[:150], train.labels[:150]
    m = quality.generation_metrics(
        fake,
        test.images,
        extractor,
        cache_dir=cache,
        ref_key="stripes-test",
        labels=labels,
        kid_subset_size=5000,
        kid_subsets=5,
        device=CPU,
    )
    assert m["features"] == extractor.tag and m["n_samples"] == 150 and m["n_ref"] == 150
    assert m["kid_subset_size"] == 150  # clamped to the sample count instead of torch-fidelity's ValueError
    # FID: torch-fidelity (eigenvalues) vs clean-fid (scipy sqrtm) vs benchkit's own, on the same features.
    assert m["fid_rel_diff"] < 1e-3 and m["fid"] > 0
    own = frechet.fid_from_features(extractor.features(fake), extractor.features(test.images))
    assert m["fid"] == pytest.approx(own, rel=1e-4)
    # KID: with the subset equal to the whole set every subset is the full set (so 5 subsets suffice) and both
    # libraries compute the same unbiased MMD^2 with float32 kernels.
    assert abs(m["kid_mean"] - m["kid_cleanfid"]) <= 1e-3 * abs(m["kid_mean"]) + 1e-6
    assert 1.0 <= m["is_mean"] <= 3.0 + 1e-6 and m["isc_splits"] == 10
    assert 0.0 <= m["precision"] <= 1.0 and 0.0 <= m["recall"] <= 1.0
    acc = (extractor.logits(fake).argmax(1) == labels).double().mean().item()
    assert m["class_acc"] == pytest.approx(acc) and m["class_acc"] > 0.6


def test_fidelity_refuses_unknown_options() -> None:
    with pytest.raises(AssertionError, match="silently ignore.*typo_option"):
        quality.fidelity_metrics(fid=True, typo_option=3)


def test_rejects_float_images(data: tuple[ImageData, ImageData], extractor, cache: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        quality.generation_metrics(
            data[0].images[:10].float(), data[1].images, extractor, cache_dir=cache, ref_key="x", device=CPU
        )


def test_reference_cache_reused_and_keyed_by_weights(data: tuple[ImageData, ImageData], extractor, cache: Path) -> None:
    train, test = data
    first = quality.reference_stats(test.images, extractor, cache_dir=cache, ref_key="ref-test")
    assert first.path.is_file() and extractor.weights_hash[:16] in first.path.name
    with mock.patch.object(extractor, "features", side_effect=AssertionError("recomputed")):
        second = quality.reference_stats(test.images, extractor, cache_dir=cache, ref_key="ref-test")
    assert second.loaded and not first.loaded and second.path == first.path
    assert np.array_equal(second.mu, first.mu) and np.array_equal(second.sigma, first.sigma)
    # Other images under the same ref_key: another entry.
    other_imgs = quality.reference_stats(test.images[:100], extractor, cache_dir=cache, ref_key="ref-test")
    assert not other_imgs.loaded and other_imgs.path != first.path
    # Other weights (a classifier trained with another seed): a new entry, never the old statistics.
    other = load_extractor("dataset", train_data=train, cache_dir=cache, device=CPU, options={**TINY, "seed": 1})
    assert other.weights_hash != extractor.weights_hash
    third = quality.reference_stats(test.images, other, cache_dir=cache, ref_key="ref-test")
    assert not third.loaded and third.path != first.path and not np.allclose(third.mu, first.mu)
    # torch-fidelity's cache entries carry the weights hash through the registered name.
    quality.generation_metrics(
        train.images[:20],
        test.images,
        other,
        cache_dir=cache,
        ref_key="ref-test",
        prc=False,
        clean_fid=False,
        kid_subsets=5,
        device=CPU,
    )
    names = [p.name for p in (cache / "fidelity").iterdir()]
    assert names and all("benchkit-" in n for n in names)
    assert any(other.fidelity_name in n for n in names)


def test_fid_infinity_removes_sample_size_bias() -> None:
    rng = np.random.default_rng(0)
    d, n = 64, 2000
    shift = np.zeros(d)
    shift[:2] = 0.5  # true FID against N(0, I) = 0.5; FID at N = 2000 carries a bias of about d^2 / (4N)
    feats = torch.from_numpy(rng.standard_normal((n, d)) + shift)
    res = frechet.fid_infinity(feats, np.zeros(d), np.eye(d), seed=0)
    fid_n = frechet.frechet_distance(*frechet.feature_stats(feats), np.zeros(d), np.eye(d))
    assert len(res.ns) == 15 and res.ns[0] == n // 5 and res.ns[-1] == n
    assert fid_n - 0.5 > 0.3 and res.slope > 0
    assert abs(res.fid_inf - 0.5) < abs(fid_n - 0.5) / 2


def test_frechet_matches_cleanfid_on_random_stats() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((500, 16)) * 1.3 + 0.2
    s1, s2 = frechet.feature_stats(a), frechet.feature_stats(b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's sqrtm(disp=) deprecation must not leak out of cleanfid_fid
        assert frechet.frechet_distance(*s1, *s2) == pytest.approx(quality.cleanfid_fid(*s1, *s2), rel=1e-8)


@pytest.mark.parametrize("n", [40, 400])  # 40 < d: a singular sample covariance, as at the 100-sample points
def test_fid_to_a_fixed_reference_equals_frechet_distance(n: int) -> None:
    rng = np.random.default_rng(2)
    d = 64
    mix = rng.standard_normal((d, d)) * 0.3
    ref = frechet.feature_stats(rng.standard_normal((3000, d)) @ mix)
    to_ref = frechet.FidToReference(*ref)
    for shift in (0.0, 0.5):
        stats = frechet.feature_stats(rng.standard_normal((n, d)) @ mix + shift)
        assert to_ref(*stats) == pytest.approx(frechet.frechet_distance(*stats, *ref), rel=1e-7)
    assert to_ref(*ref) == pytest.approx(0.0, abs=1e-8)


# ---------------------------------------------------------------------------------------------- reconstruction


def test_psnr_known_values() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 1.6 - 0.8
    signs = (torch.randint(0, 2, a.shape, generator=g) * 2 - 1).double()
    assert recon.psnr(a, a.clone()) == math.inf
    assert recon.psnr(a, a + 0.1 * signs) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-9)  # range 2, MSE 0.01
    u = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    assert recon.psnr(u, u + 10) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    with pytest.raises(ValueError, match="uint8"):
        recon.psnr(u, u.float())


def test_ssim_known_values() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 16, 16), generator=g, dtype=torch.uint8)
    assert recon.ssim(x, x.clone()) == 1.0
    # Constant images a, b: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1) with values in [0, 1].
    a, b = torch.full((1, 3, 12, 12), 51, dtype=torch.uint8), torch.full((1, 3, 12, 12), 204, dtype=torch.uint8)
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * 0.2 * 0.8 + c1) * c2 / ((0.2**2 + 0.8**2 + c1) * c2)
    assert recon.ssim(a, b) == pytest.approx(expected, rel=1e-9)
    noisy = (x.float() + 40 * torch.randn(x.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
    very = (x.float() + 120 * torch.randn(x.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)
    assert 1.0 > recon.ssim(x, noisy) > recon.ssim(x, very)
    # Float images in [-1, 1] are rescaled to the same [0, 1] range.
    assert recon.ssim(x.float() / 127.5 - 1, noisy.float() / 127.5 - 1) == pytest.approx(recon.ssim(x, noisy))


def test_codebook_usage_and_perplexity() -> None:
    ids = torch.zeros(4, 2, 2, 2, dtype=torch.long)  # [B, h, w, D] with 16 positions per depth
    ids[..., 0] = torch.arange(16).reshape(4, 2, 2) % 2  # depth 0: codes {0, 1} equally often
    ids[..., 1] = torch.arange(16).reshape(4, 2, 2) % 4  # depth 1: codes {0..3} equally often
    out = recon.codebook_usage(ids, vocab_size=8)
    assert out["codebook_usage_d0"] == pytest.approx(25.0) and out["codebook_usage_d1"] == pytest.approx(50.0)
    assert out["codebook_perplexity_d0"] == pytest.approx(2.0) and out["codebook_perplexity_d1"] == pytest.approx(4.0)
    assert out["codebook_usage"] == pytest.approx(37.5) and out["codebook_perplexity"] == pytest.approx(3.0)
    one = recon.codebook_usage(torch.tensor([[[3, 3], [3, 3]]]), vocab_size=4)
    assert one == {"codebook_usage": 25.0, "codebook_perplexity": 1.0}
    with pytest.raises(ValueError, match="outside"):
        recon.codebook_usage(torch.tensor([[[4]]]), vocab_size=4)
    assert recon.bits_per_image(64, 4, 256) == 64 * 4 * 8


# ---------------------------------------------------------------------------------------------- cost


def test_flops_params_and_timers() -> None:
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    assert cost.flops_per_call(lin, x) == 2 * 16 * 8 * 4
    assert cost.count_params(lin) == 16 * 8 + 8
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))  # batch, heads, tokens, head dim
    sdpa = torch.nn.functional.scaled_dot_product_attention
    assert cost.flops_per_call(sdpa, q, k, v) == 2 * (2 * 2 * 3 * 5 * 5 * 4)  # QK^T and AV on the CPU kernel
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    assert cost.flops_per_call(conv, torch.randn(1, 3, 8, 8)) == 2 * 3 * 6 * 9 * 64
    lin.bias.requires_grad_(False)
    assert cost.count_params(lin, trainable_only=True) == 16 * 8
    seconds = cost.latency(lambda: time.sleep(0.01), warmup=0, repeats=3)
    assert 0.01 <= seconds < 0.5
    assert cost.throughput(lambda: time.sleep(0.01), batch_size=4, warmup=0, repeats=3) == pytest.approx(
        4 / 0.01, rel=0.8
    )
    assert 1e6 < cost.matmul_peak_flops(CPU, size=128, repeats=3) < 1e15
    assert cost.peak_memory_mb(CPU) > 10
