"""ADM evaluation suite pieces (benchkit.metrics.adm): the .npz reader and writer, and FID / sFID / IS / precision /
recall against direct NumPy implementations of the same formulas written here (O(n^2), small random features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from random_inception import write_random_inception

from benchkit.core.errors import ConfigError
from benchkit.metrics import adm

# ---------------------------------------------------------------------------------------------- direct formulas


def np_stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, np.float64)
    c = f - f.mean(0)
    return f.mean(0), c.T @ c / (len(f) - 1)


def np_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    # Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2), both symmetric PSD: eigh only
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(m, 0, None)).sum())


def np_precision_recall(ref: np.ndarray, smp: np.ndarray, k: int = 3) -> tuple[float, float]:
    def d2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    r_ref = np.sort(d2(ref, ref), axis=1)[:, k]  # column 0 is the point itself
    r_smp = np.sort(d2(smp, smp), axis=1)[:, k]
    d = d2(ref, smp)
    precision = (d <= r_ref[:, None]).any(axis=0).mean()
    recall = (d <= r_smp[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def np_inception_score(logits: np.ndarray, split: int) -> float:
    scores = []
    for i in range(0, len(logits), split):
        z = logits[i : i + split]
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = p.mean(0)
        scores.append(np.exp(np.mean([sum(pi * np.log(pi / py)) for pi in p])))
    return float(np.mean(scores))


def random_stats(rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for mu, sigma, d in (("mu", "sigma", adm.POOL_DIM), ("mu_s", "sigma_s", adm.SPATIAL_DIM)):
        out[mu] = rng.standard_normal(d)
        out[sigma] = np.diag(rng.random(d) + 0.5)
    return out


# ---------------------------------------------------------------------------------------------- reader and writer


@pytest.fixture(scope="module")
def ref_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[adm.AdmBatch, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 8, 6, 3), dtype=np.uint8)
    stats = random_stats(rng)
    path = adm.write_adm_batch(tmp_path_factory.mktemp("adm") / "ref.npz", images, labels=np.arange(7), stats=stats)
    return adm.read_adm_batch(path), images, stats


def test_reader_reads_what_the_writer_wrote(ref_batch: tuple[adm.AdmBatch, np.ndarray, dict]) -> None:
    batch, images, stats = ref_batch
    assert (batch.num_images, batch.image_shape, batch.has_stats) == (7, (8, 6, 3), True)
    assert np.array_equal(batch.load_images(), images)
    parts = list(batch.iter_images(batch_size=3))
    assert [len(p) for p in parts] == [3, 3, 1] and all(p.dtype == np.uint8 for p in parts)
    assert np.array_equal(np.concatenate(parts), images)
    for k, v in stats.items():
        assert np.array_equal(getattr(batch, k), v) and getattr(batch, k).dtype == np.float64
    assert batch.labels is not None and list(batch.labels) == list(range(7))
    with np.load(batch.path) as npz:  # a plain npz, as ADM's evaluator reads it
        assert sorted(npz.files) == ["arr_0", "arr_1", "mu", "mu_s", "sigma", "sigma_s"]


def test_sample_batch_without_stats(tmp_path) -> None:
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    path = adm.write_adm_batch(tmp_path / "samples.npz", adm.nchw_to_nhwc(images))
    batch = adm.read_adm_batch(path, need_stats=False)
    assert not batch.has_stats and batch.labels is None
    assert np.array_equal(batch.load_images(), images.permute(0, 2, 3, 1).numpy())
    with pytest.raises(ConfigError, match="lacks mu, sigma, mu_s, sigma_s; found arr_0"):
        adm.read_adm_batch(path)
    with pytest.raises(ConfigError, match="no reference statistics"):
        adm.adm_fid(np.zeros((3, adm.POOL_DIM)), batch)


def _one_line(e: pytest.ExceptionInfo[ConfigError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_reader_errors(tmp_path) -> None:
    rng = np.random.default_rng(1)
    good = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    stats = random_stats(rng)
    with pytest.raises(ConfigError) as e:
        adm.read_adm_batch(tmp_path / "nope.npz")
    assert "nope.npz not found" in _one_line(e)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ConfigError, match="is not an .npz file"):
        adm.read_adm_batch(tmp_path / "text.npz")
    cases = {
        "keys.npz": ({"images": good}, "lacks arr_0, mu, sigma, mu_s, sigma_s; found images"),
        "partial.npz": ({"arr_0": good, "mu": stats["mu"]}, "lacks sigma, mu_s, sigma_s; found arr_0, mu"),
        "float.npz": (
            {"arr_0": good.astype(np.float32), **stats},
            r"arr_0 must be uint8 \[N,H,W,3\] \(NHWC\), got float32",
        ),
        "nchw.npz": ({"arr_0": good.transpose(0, 3, 1, 2), **stats}, r"got uint8 \(3, 3, 4, 4\)"),
        "mu.npz": ({"arr_0": good, **stats, "mu": np.zeros(7)}, r"mu must be float \(2048,\), got float64 \(7,\)"),
        "sig.npz": ({"arr_0": good, **stats, "sigma_s": np.zeros((2023, 2023), np.int32)}, "sigma_s must be float"),
        "labels.npz": ({"arr_0": good, **stats, "arr_1": np.zeros(2, np.int64)}, r"arr_1 \(labels\) must be"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ConfigError, match=message) as e:
            adm.read_adm_batch(tmp_path / name)
        assert name in _one_line(e)


def test_writer_streams_chunks(tmp_path) -> None:
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (10, 4, 5, 3), dtype=np.uint8)
    chunks = (images[i : i + 3] for i in range(0, 10, 3))  # a generator: never all in memory at once
    path = adm.write_adm_batch(tmp_path / "s.npz", chunks, num_images=10, labels=np.arange(10) % 3)
    with np.load(path) as npz:  # what numpy (and ADM's evaluator) reads back
        assert np.array_equal(npz["arr_0"], images) and list(npz["arr_1"]) == [i % 3 for i in range(10)]
    with pytest.raises(ValueError, match="num_images is 11 but the chunks held 10 images"):
        adm.write_adm_batch(tmp_path / "t.npz", iter([images[:4], images[4:]]), num_images=11)
    with pytest.raises(ValueError, match="image chunks must be uint8"):
        adm.write_adm_batch(tmp_path / "t.npz", iter([images[:4], images[4:, :3]]), num_images=10)
    assert not (tmp_path / "t.npz").exists()


def test_writer_refuses_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="NHWC"):
        adm.write_adm_batch(tmp_path / "x.npz", np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="stats must hold exactly"):
        adm.write_adm_batch(tmp_path / "x.npz", np.zeros((2, 4, 4, 3), np.uint8), stats={"mu": np.zeros(2048)})
    assert not (tmp_path / "x.npz").exists()


# ---------------------------------------------------------------------------------------------- spatial features


def test_spatial_reduction_shape_and_order() -> None:
    n, c = 2, 9
    idx = np.indices((n, c, 17, 17))
    code = idx[0] * 1_000_000 + idx[1] * 10_000 + idx[2] * 100 + idx[3]  # sample, channel, row, column
    out = adm.adm_spatial_features(torch.from_numpy(code.astype(np.float64)))
    assert out.shape == (n, 2023) == (n, adm.SPATIAL_DIM)
    for i, ch, h, w in [(0, 0, 0, 0), (1, 6, 16, 16), (0, 3, 5, 11), (1, 0, 16, 0)]:
        assert out[i, (h * 17 + w) * 7 + ch] == i * 1_000_000 + ch * 10_000 + h * 100 + w
    assert not np.isin(code[:, 7:], out).any()  # channels 7.. are dropped
    # what ADM does to the TF tensor: NHWC [..., :7], then a row-major reshape
    assert np.array_equal(out, code.transpose(0, 2, 3, 1)[..., :7].reshape(n, -1))
    with pytest.raises(ValueError, match=r"\[N, >=7, 17, 17\]"):
        adm.adm_spatial_features(np.zeros((1, 6, 17, 17)))


def test_inception_hook_takes_mixed_6d_branch1x1(tmp_path) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    path = write_random_inception(tmp_path / "inception.pth")
    net = FeatureExtractorInceptionV3("adm-test", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    feats = adm.adm_inception_features(net, images, batch_size=2)
    assert feats.pool.shape == (3, 2048) and feats.spatial.shape == (3, 2023) and feats.logits.shape == (3, 1008)
    with torch.no_grad():  # the same forward, by hand, up to ADM's mixed_6/conv
        x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False)
        x = (x - 128) / 128
        for name in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"]:  # fmt: skip
            x = getattr(net, name)(x)
        spatial = net.Mixed_6d.branch1x1(x)
        pool, logits = net(images)
    assert spatial.shape == (3, 192, 17, 17)
    np.testing.assert_allclose(feats.spatial, adm.adm_spatial_features(spatial), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feats.pool, pool.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats.logits, logits.double().numpy(), rtol=1e-5, atol=1e-6)
    assert not net.Mixed_6d.branch1x1._forward_hooks  # the hook is removed again


# ---------------------------------------------------------------------------------------------- formulas


def test_frechet_distance_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((400, 20))
    b = rng.standard_normal((300, 20)) * 1.3 + 0.2
    ours = adm.adm_frechet_distance(*adm.adm_statistics(a), *adm.adm_statistics(b))
    assert ours == pytest.approx(np_frechet(*np_stats(a), *np_stats(b)), rel=1e-9)
    assert adm.adm_frechet_distance(*adm.adm_statistics(a), *adm.adm_statistics(a)) == pytest.approx(0, abs=1e-9)
    spatial = rng.random((300, 7, 17, 17))  # the sFID chain on spatial maps, small: only 2023 columns per sample
    flat = adm.adm_spatial_features(spatial)
    mu, sigma = adm.adm_statistics(flat[:, :30])
    assert np.allclose(mu, spatial.transpose(0, 2, 3, 1).reshape(300, -1)[:, :30].mean(0))
    assert adm.adm_frechet_distance(mu, sigma, *np_stats(flat[:150, :30])) == pytest.approx(
        np_frechet(*np_stats(flat[:, :30]), *np_stats(flat[:150, :30])), rel=1e-8
    )


@pytest.mark.slow
def test_fid_and_sfid_against_a_reference_batch(tmp_path) -> None:
    """The full-size chain: statistics read from a reference batch on disk, sample features of the real widths."""
    rng = np.random.default_rng(3)
    ref_pool, ref_spatial = rng.standard_normal((2100, 2048)), rng.standard_normal((2100, 2023))
    stats = dict(zip(("mu", "sigma"), np_stats(ref_pool))) | dict(zip(("mu_s", "sigma_s"), np_stats(ref_spatial)))
    path = adm.write_adm_batch(tmp_path / "ref.npz", np.zeros((1, 4, 4, 3), np.uint8), stats=stats)
    ref = adm.read_adm_batch(path)
    pool, spatial = rng.standard_normal((2100, 2048)) + 0.1, rng.standard_normal((2100, 2023)) * 1.1
    assert adm.adm_fid(pool, ref) == pytest.approx(np_frechet(*np_stats(pool), *stats_of(stats, "")), rel=1e-6)
    assert adm.adm_sfid(spatial, ref) == pytest.approx(np_frechet(*np_stats(spatial), *stats_of(stats, "_s")), rel=1e-6)


def stats_of(stats: dict[str, np.ndarray], suffix: str) -> tuple[np.ndarray, np.ndarray]:
    return stats["mu" + suffix], stats["sigma" + suffix]


def test_inception_score_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((23, 10)) * 3
    for split in (5000, 10, 7):
        assert adm.adm_inception_score(logits, split_size=split) == pytest.approx(np_inception_score(logits, split))
    assert adm.adm_inception_score(np.zeros((9, 5))) == pytest.approx(1.0)  # one prediction for all: IS 1
    assert adm.adm_inception_score(np.eye(4) * 1000) == pytest.approx(4.0)  # confident and balanced: IS = classes


def test_precision_recall_match_numpy() -> None:
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((120, 16))
    smp = rng.standard_normal((90, 16)) * 0.8 + 0.4
    want = np_precision_recall(ref, smp)
    assert 0 < want[0] < 1 and 0 < want[1] < 1  # the test is not trivial
    for block in (4096, 17, 5):
        got = adm.adm_precision_recall(ref, smp, block=block, dtype=torch.float64)
        assert (got.precision, got.recall) == pytest.approx(want, abs=1e-12)
    r = adm.manifold_radii(ref, block=7, dtype=torch.float64).numpy()
    d = ((ref[:, None] - ref[None]) ** 2).sum(-1)
    np.testing.assert_allclose(r, np.sort(d, axis=1)[:, 3], rtol=1e-10)
    same = adm.adm_precision_recall(ref, ref, dtype=torch.float64)
    assert (same.precision, same.recall) == (1.0, 1.0)
    far = adm.adm_precision_recall(ref, smp + 100.0)
    assert (far.precision, far.recall) == (0.0, 0.0)
    with pytest.raises(ValueError, match="more than k = 3"):
        adm.manifold_radii(ref[:3])


def test_precision_recall_count_points_on_the_ball() -> None:
    # 1-D references 0..4: the 3-NN radius of 0 is 3 (squared 9). A sample at -3 lies exactly on that ball and in no
    # other, so it counts only under ADM's "distance <= radius".
    ref = np.arange(5.0)[:, None]
    smp = np.array([[-3.0], [-3.0], [-3.0], [-3.0], [40.0]])
    for dtype in (torch.float64, torch.float32):
        got = adm.adm_precision_recall(ref, smp, dtype=dtype)
        assert got.precision == pytest.approx(0.8)  # four samples at -3 in, the one at 40 out
    assert got.precision == np_precision_recall(ref, smp)[0]


def test_precision_recall_never_hold_a_full_distance_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes: list[tuple[int, ...]] = []
    real = adm._sqdist

    def spy(a: torch.Tensor, an: torch.Tensor, b: torch.Tensor, bn: torch.Tensor) -> torch.Tensor:
        shapes.append((len(a), len(b)))
        return real(a, an, b, bn)

    monkeypatch.setattr(adm, "_sqdist", spy)
    rng = np.random.default_rng(6)
    got = adm.adm_precision_recall(rng.standard_normal((500, 8)), rng.standard_normal((300, 8)), block=64)
    assert shapes and max(a * b for a, b in shapes) <= 64 * 64
    assert 0 <= got.precision <= 1 and 0 <= got.recall <= 1
