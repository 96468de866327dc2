"""Evaluation protocols wired to the config (benchkit.evaluation.protocols): the eval.protocol / reference_batch /
cmmd / fd_dinov2 settings and their errors, the checks before compute, ADM's columns end to end on a written reference
batch with a random Inception-V3 (against the same formulas of benchkit.metrics.adm applied by hand), the DINOv2
feature extractors (FID without IS), the extra columns, and exporting a run's samples as an ADM batch."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import QUICK

from benchkit.core.config import FD_DINOV2_ARCHS, EvalConfig, resolve
from benchkit.core.errors import ConfigError
from benchkit.evaluation import protocols
from benchkit.metrics import adm, cmmd, dinov2
from benchkit.metrics.extractor import sha256_file
from benchkit.metrics.features import check_protocol, extractor_options, load_extractor
from benchkit.metrics.frechet import feature_stats, fid_from_features, frechet_distance
from benchkit.metrics.quality import generation_metrics
from benchkit.metrics.refstats import load_reference_stats
from benchkit.training.artifacts import run_fingerprint

sys.path.insert(0, str(Path(__file__).parent))
from test_adm_protocol import random_stats  # noqa: E402
from test_dinov2_cmmd import release_dinov2  # noqa: E402

CPU = torch.device("cpu")
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")


def images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def one_line(e: pytest.ExceptionInfo[ConfigError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------- config


def test_eval_config_protocol_errors(tmp_path: Path) -> None:
    batch = str(tmp_path / "ref.npz")
    adm_sets = ['eval.protocol="adm"', 'eval.features="inception"', f'eval.reference_batch="{batch}"']
    cfg = resolve("tiny", None, adm_sets)
    auto = resolve("tiny", None, [adm_sets[0], adm_sets[2]]).eval  # features "auto" under adm is ADM's Inception
    assert auto.features == "inception" and auto == cfg.eval
    assert (cfg.eval.protocol, cfg.eval.reference_batch) == ("adm", batch) and resolve(
        "tiny"
    ).eval.protocol == "benchkit"
    cases = [
        (['eval.protocol="adm2"'], r"eval.protocol = 'adm2' is not valid; valid: 'benchkit', 'adm'"),
        (['eval.protocol="adm"', 'eval.features="inception"'], "needs eval.reference_batch"),
        ([adm_sets[0], adm_sets[2], 'eval.features="dataset"'], "needs eval.features = \"inception\".*'dataset'"),
        ([*adm_sets, 'eval.reference_stats="x.npz"'], "unset eval.reference_stats"),
        ([f'eval.reference_batch="{batch}"'], r"eval.reference_batch is read by eval.protocol = \"adm\" only"),
        (['eval.fd_dinov2="dinov2-vit-l14"'], "unknown eval.fd_dinov2.*valid: dinov2-vit-s-14.*did you mean"),
    ]
    for sets, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            resolve("tiny", None, sets)
        one_line(e)
    with pytest.raises(ConfigError, match="unknown eval.protocol 'adn'; valid: benchkit, adm; did you mean 'adm'"):
        EvalConfig(protocol="adn")  # type: ignore[arg-type]  # built in code: the same check
    assert FD_DINOV2_ARCHS == tuple(dinov2.DINOV2_ARCHS)


def test_new_eval_fields_leave_run_identity_alone(tmp_path: Path) -> None:
    base = resolve("tiny")
    other = dataclasses.replace(
        base,
        eval=EvalConfig(
            features="inception",
            protocol="adm",
            reference_batch="b.npz",
            cmmd=True,
            fd_dinov2="dinov2-vit-b-14",
            dinov2_weights="d.pth",
            clip_weights="c.pt",
        ),
    )
    assert run_fingerprint(other) == run_fingerprint(base)
    assert protocols.row_identity(base.eval) == ()  # default settings: every earlier row id stays
    path = adm.write_adm_batch(tmp_path / "ref.npz", np.zeros((2, 4, 4, 3), np.uint8))
    ev = EvalConfig(features="inception", protocol="adm", reference_batch=str(path), fd_dinov2="dinov2-vit-l-14")
    ident = protocols.row_identity(ev)
    assert ident == ({"protocol": "adm", "reference_batch": sha256_file(path)[:16], "fd_dinov2": "dinov2-vit-l-14"},)
    assert protocols.row_identity(EvalConfig(cmmd=True)) == ({"cmmd": True},)
    assert protocols.protocol_labels(resolve("tiny"), 200) == {"protocol": "benchkit", "reference": "shapes-test-200"}
    assert protocols.protocol_labels(dataclasses.replace(base, eval=ev), 200) == {
        "protocol": "adm",
        "reference": "ref.npz",
    }


def test_adm_npz_is_a_reference_statistics_file(tmp_path: Path) -> None:
    stats = random_stats(np.random.default_rng(0))
    path = adm.write_adm_batch(
        tmp_path / "ref.npz", images(3, 0).permute(0, 2, 3, 1).numpy(), stats=stats, labels=np.arange(3)
    )
    mu, sigma = load_reference_stats(path)  # arr_0, arr_1, mu_s and sigma_s are there and ignored
    assert np.array_equal(mu, stats["mu"]) and np.array_equal(sigma, stats["sigma"])


# ---------------------------------------------------------------------------------------------- checks before compute


def test_checks_name_the_missing_file_before_any_network_is_built(
    no_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*a: object, **k: object) -> None:
        raise AssertionError("a network was built")

    monkeypatch.setattr(dinov2, "build_dinov2", never)
    monkeypatch.setattr(cmmd, "build_clip_visual", never)
    hub = no_weights / "torch" / "hub" / "checkpoints"
    with pytest.raises(ConfigError) as e:
        check_protocol(EvalConfig(fd_dinov2="dinov2-vit-l-14"))
    msg = one_line(e)
    assert "dinov2_vitl14_pretrain.pth" in msg and str(hub) in msg and "eval.dinov2_weights" in msg
    assert "never downloads" in msg
    with pytest.raises(ConfigError, match=r"looked at option eval.dinov2_weights=/nowhere/d.pth") as e:
        check_protocol(EvalConfig(features="dinov2-vit-b-14", dinov2_weights="/nowhere/d.pth"))
    assert "dinov2_vitb14_pretrain.pth" in one_line(e)
    with pytest.raises(ConfigError) as e:
        check_protocol(EvalConfig(cmmd=True))
    msg = one_line(e)
    assert "ViT-L-14-336px.pt" in msg and "eval.clip_weights" in msg and str(hub) in msg
    with pytest.raises(ConfigError, match="nope.npz not found"):
        check_protocol(EvalConfig(features="inception", protocol="adm", reference_batch=str(no_weights / "nope.npz")))
    samples_only = adm.write_adm_batch(no_weights / "samples.npz", np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match="lacks mu, sigma, mu_s, sigma_s"):
        check_protocol(EvalConfig(features="inception", protocol="adm", reference_batch=str(samples_only)))
    with pytest.raises(ConfigError, match="reference_stats holds statistics only"):
        check_protocol(EvalConfig(cmmd=True, reference_stats="ref.npz"))
    check_protocol(EvalConfig())  # nothing asked, nothing needed


# ---------------------------------------------------------------------------------------------- ADM end to end


def fast_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    """FID with Tr (S1 S2)^(1/2) = Tr (D^(1/2) S1 D^(1/2))^(1/2) for a diagonal S2 = D (the test batch's sigma and
    sigma_s), one symmetric eigenvalue problem: scipy's sqrtm of a 2048 x 2048 product takes minutes on a loaded
    2-core machine. ADM's own formula is checked in test_adm_protocol.py."""
    d = np.diagonal(s2)
    assert np.array_equal(s2, np.diag(d)), "fast_frechet needs a diagonal second covariance"
    m = np.linalg.eigvalsh(s1 * np.sqrt(d)[:, None] * np.sqrt(d)[None, :])
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + d.sum() - 2 * np.sqrt(np.clip(m, 0, None)).sum())


def test_adm_quality_matches_adm_formulas_by_hand(
    random_inception: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adm, "adm_frechet_distance", fast_frechet)  # both sides: the same Frechet distance
    monkeypatch.setattr(protocols, "cleanfid_fid_or_reason", lambda *a: (fast_frechet(*a), ""))
    ref_images = images(10, 1)
    batch_path = adm.write_adm_batch(
        tmp_path / "VIRTUAL_tiny.npz", adm.nchw_to_nhwc(ref_images), stats=random_stats(np.random.default_rng(2))
    )
    cfg = resolve(
        "tiny",
        None,
        [
            f'out_dir="{tmp_path / "out"}"',
            'eval.protocol="adm"',
            'eval.features="inception"',
            f'eval.reference_batch="{batch_path}"',
            f'eval.inception_weights="{random_inception}"',
        ],
    )
    fake = images(8, 3)
    chunks = [fake[:5], fake[5:]]  # streamed samples, read once
    out = protocols.adm_quality(iter(chunks), torch.arange(8) % 4, cfg, CPU)

    ext = load_extractor(
        "inception", train_data=None, cache_dir=tmp_path, device=CPU, weights_path=str(random_inception)
    )
    mine = adm.adm_inception_features(ext.module, fake)
    ref_pool = adm.adm_inception_features(ext.module, ref_images).pool
    batch = adm.read_adm_batch(batch_path)
    pr = adm.adm_precision_recall(ref_pool, mine.pool)
    assert out["protocol"] == "adm" and out["reference"] == "VIRTUAL_tiny.npz" and out["features"] == ext.tag
    assert (out["n_samples"], out["n_ref"]) == (8, 10) and "fid_invalid" not in out
    assert out["fid"] == pytest.approx(adm.adm_fid(mine.pool, batch), rel=1e-5)
    assert out["sfid"] == pytest.approx(adm.adm_sfid(mine.spatial, batch), rel=1e-5)
    is_excess = adm.adm_inception_score(mine.logits) - 1  # random weights: nearly uniform predictions, IS ~ 1 + 1e-5
    assert float(out["is_mean"]) - 1 == pytest.approx(is_excess, rel=1e-3) and is_excess > 0
    assert (out["precision"], out["recall"]) == (pr.precision, pr.recall)
    assert 0 < pr.precision < 1 or 0 < pr.recall < 1  # a test that can tell samples from references
    assert out["fid"] != pytest.approx(out["sfid"]) and float(out["fid_rel_diff"]) < 1e-9

    # the batch's features are cached under the run's cache, keyed by the file's sha256 and the weights' hash
    cached = list((tmp_path / "out" / "_cache" / "protocols").glob("*.npy"))
    assert len(cached) == 1 and sha256_file(batch_path)[:16] in cached[0].name
    assert ext.weights_hash[:16] in cached[0].name

    def no_reading(*a: object, **k: object) -> None:
        raise AssertionError("reference images read again")

    monkeypatch.setattr(protocols, "_batch_chunks", no_reading)
    again = protocols.adm_quality(fake, None, cfg, CPU)
    assert again["fid"] == out["fid"] and again["precision"] == out["precision"]
    with pytest.raises(ValueError, match="3 labels for 8 samples"):
        protocols.adm_quality(fake, torch.zeros(3), cfg, CPU)


# ---------------------------------------------------------------------------------------------- DINOv2 and extras


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(release_dinov2(384, 12, seed=4), path)
    return path


@needs_timm
def test_dinov2_features_give_fid_without_is(dino_file: Path, tmp_path: Path) -> None:
    ext = load_extractor(
        "dinov2-vit-s-14",
        train_data=None,
        cache_dir=tmp_path,
        device=CPU,
        weights_path="/ignored/inception.pth",
        options={"weights_file": str(dino_file)},
    )
    assert ext.tag.startswith("dinov2-vit-s-14@") and not ext.has_logits and ext.num_classes is None
    fake, real = images(6, 5), (images(6, 6).int() // 3 + 80).to(torch.uint8)
    m = generation_metrics(
        fake,
        real,
        ext,
        cache_dir=tmp_path,
        ref_key="dino",
        labels=torch.arange(6) % 3,
        prc=True,
        kid_subsets=5,
        device=CPU,
    )
    assert not {"is_mean", "is_std", "isc_splits", "class_acc", "class_acc_min"} & set(m)
    feats, logits = ext.features_and_logits(fake)
    assert logits is None and feats.shape == (6, 384)
    own = fid_from_features(feats, ext.features(real))
    assert m["features"] == ext.tag and own > 1 and m["fid"] == pytest.approx(own, rel=1e-4)  # torch-fidelity
    assert "fid_invalid" not in m and float(m["fid_rel_diff"]) < 1e-3  # clean-fid's FID of the same features agrees
    assert "kid_mean" in m and "kid_cleanfid" in m and "precision" in m
    with pytest.raises(ConfigError, match="no logits"):
        ext.logits(fake)
    assert extractor_options(EvalConfig(features="dinov2-vit-s-14", dinov2_weights="w")) == {"weights_file": "w"}
    assert extractor_options(EvalConfig(features="inception", dinov2_weights="w")) == {}


class TinyClip(torch.nn.Module):
    """A stand-in for CLIP ViT-L/14@336 (438M parameters): unit-norm colour statistics of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.float() / 255
        return torch.nn.functional.normalize(torch.cat([f.mean((2, 3)), f.std((2, 3))], 1) * self.scale, dim=-1)


@needs_timm
def test_extra_columns_against_held_out_images_and_an_adm_batch(
    dino_file: Path, tmp_path: Path, no_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip_file = tmp_path / "ViT-L-14-336px.pt"
    clip_file.write_bytes(b"not read: load_clip is replaced below")
    tiny = TinyClip()
    monkeypatch.setattr(protocols, "load_clip", lambda cfg, device: tiny)
    cfg = resolve(
        "tiny",
        None,
        [
            f'out_dir="{tmp_path / "out"}"',
            "eval.cmmd=true",
            'eval.fd_dinov2="dinov2-vit-s-14"',
            f'eval.dinov2_weights="{dino_file}"',
            f'eval.clip_weights="{clip_file}"',
        ],
    )
    check_protocol(cfg.eval)
    fake, real = images(6, 7), (images(7, 8).int() // 2 + 60).to(torch.uint8)
    out = protocols.extra_quality(fake, real, cfg, CPU)
    net = dinov2.load_dinov2(dinov2.DinoV2Config(arch="dinov2-vit-s-14", weights_file=str(dino_file)))
    want_fd = frechet_distance(
        *feature_stats(dinov2.dinov2_features(net, fake)), *feature_stats(dinov2.dinov2_features(net, real))
    )
    want_cmmd = cmmd.cmmd(cmmd.clip_embeddings(tiny, real), cmmd.clip_embeddings(tiny, fake))  # type: ignore[arg-type]
    assert out["fd_dinov2"] == pytest.approx(want_fd, rel=1e-4) and want_fd > 0
    assert out["cmmd"] == pytest.approx(want_cmmd, rel=1e-6) and want_cmmd > 0
    assert str(out["fd_dinov2_features"]).startswith("dinov2-vit-s-14@")
    assert str(out["cmmd_features"]).startswith("clip-vit-l-14-336@")  # not OpenAI's file: the tag says so
    assert protocols.extra_quality(fake, real, resolve("tiny"), CPU) == {}  # neither asked for
    # against an ADM batch: its arr_0 images are the reference, embedded once and cached
    batch = adm.read_adm_batch(
        adm.write_adm_batch(tmp_path / "b.npz", adm.nchw_to_nhwc(real), stats=random_stats(np.random.default_rng(1)))
    )
    from_batch = protocols.extra_quality(fake, batch, cfg, CPU)
    assert from_batch["fd_dinov2"] == pytest.approx(out["fd_dinov2"], rel=1e-6)
    assert from_batch["cmmd"] == pytest.approx(out["cmmd"], rel=1e-9)
    monkeypatch.setattr(protocols, "_batch_chunks", lambda *a: (_ for _ in ()).throw(AssertionError("re-read")))
    assert protocols.extra_quality(fake, batch, cfg, CPU)["cmmd"] == from_batch["cmmd"]


# ---------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (trained in-process in about a second, as in test_bad_inputs.py)."""
    from benchkit.training.generator import train_generator

    out = tmp_path_factory.mktemp("export-run")
    sets = [*QUICK, "sample.batch_size=4", f'out_dir="{out}"']
    return train_generator(resolve("tiny", None, sets), progress=False).dir


def test_export_npz_writes_an_adm_sample_batch(tiny_run: Path, tmp_path: Path) -> None:
    from benchkit.training.loading import load_run

    run = load_run(tiny_run)
    k = run.generator.num_classes
    path = protocols.export_npz(run, tmp_path / "samples.npz", 2 * k + 3, chunk=5)
    batch = adm.read_adm_batch(path, need_stats=False)
    assert (batch.num_images, batch.image_shape) == (2 * k + 3, (32, 32, 3)) and not batch.has_stats
    assert batch.labels is not None and list(batch.labels) == [i % k for i in range(2 * k + 3)]
    with np.load(path) as npz:  # what guided-diffusion's evaluator reads
        assert sorted(npz.files) == ["arr_0", "arr_1"] and npz["arr_0"].dtype == np.uint8
        first = npz["arr_0"][:5]
    settings = run.cfg.sample.settings()
    want = run.sample_images(torch.arange(5) % k, settings, seed=run.cfg.seed * 1_000_003)  # chunk 0's seed
    assert np.array_equal(first, adm.nchw_to_nhwc(want)) and first.std() > 0
    outcome = protocols.export_command(tiny_run, tmp_path / "t.npz", n=4, seed=3, overrides=["sample.temperature=0.5"])
    assert outcome.images == 4 and outcome.settings["temperature"] == 0.5 and outcome.seed == 3
    assert adm.read_adm_batch(outcome.path, need_stats=False).num_images == 4
    with pytest.raises(ConfigError, match="only accepts sample"):
        protocols.export_command(tiny_run, tmp_path / "u.npz", overrides=["train.lr=1"])
    with pytest.raises(ConfigError, match=">= 1"):
        protocols.export_npz(run, tmp_path / "v.npz", 0)
    assert not (tmp_path / "u.npz").exists() and not (tmp_path / "v.npz").exists()
