"""Feature networks: the cached dataset classifier, torch-fidelity registration, offline Inception loading."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from unittest import mock

import pytest
import torch

from benchkit.core.errors import ConfigError
from benchkit.data.base import ImageData
from benchkit.metrics import featurenet
from benchkit.metrics import features as bf
from benchkit.metrics.features import INCEPTION_ENV, INCEPTION_FILE, load_extractor

TINY = {"width": 8, "steps": 40, "batch_size": 64, "lr": 5e-3}
CPU = torch.device("cpu")


def _patterns(n: int, seed: int, split: str, size: int = 16) -> ImageData:
    """Three classes: horizontal stripes, vertical stripes, a disk; random colours, phases and noise."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % 3)[torch.randperm(n, generator=g)]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    period = torch.randint(3, 6, (n, 1, 1), generator=g)
    phase = torch.randint(0, 6, (n, 1, 1), generator=g)
    centre = torch.randint(5, size - 5, (2, n, 1, 1), generator=g)
    radius = torch.randint(3, 5, (n, 1, 1), generator=g)
    masks = torch.stack(
        [
            ((yy + phase) % period) * 2 < period,
            ((xx + phase) % period) * 2 < period,
            (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2,
        ]
    )
    mask = masks[labels, torch.arange(n)].float()[:, None]  # [n, 1, size, size]
    fg, bg = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g), 0.4 * torch.rand(n, 3, 1, 1, generator=g)
    img = bg + (fg - bg) * mask + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return ImageData("patterns", split, img.clamp(0, 1).mul(255).round().to(torch.uint8), labels, ("h", "v", "disk"))


@pytest.fixture(scope="module")
def train_data() -> ImageData:
    return _patterns(300, 0, "train")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bk_cache")


def test_dataset_extractor_trains_caches_and_registers(train_data: ImageData, cache: Path) -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    ext = load_extractor("dataset", train_data=train_data, cache_dir=cache, device=CPU, options=TINY)
    assert re.fullmatch(r"dataset-fused@[0-9a-f]{8}", ext.tag)
    assert ext.weights_hash.startswith(ext.tag.split("@")[1])
    assert ext.weights_hash[:16] in ext.fidelity_name and ext.fidelity_name in FEATURE_EXTRACTORS_REGISTRY
    assert ext.weights_path.suffix == ".safetensors" and ext.weights_path.with_suffix(".json").is_file()
    feats, logits = ext.features_and_logits(train_data.images[:10])
    assert feats.shape == (10, 72 + 16 + 32) and logits.shape == (10, 3) and feats.dtype == torch.float32
    assert ext.num_classes == 3
    assert ext.info["n_val"] == 30 and ext.info["val_acc"] > 0.6  # chance is 1/3

    # Second load: same fingerprint -> no training, same weights; double registration is a no-op.
    with mock.patch.object(featurenet, "train_classifier", side_effect=AssertionError("retrained")):
        again = load_extractor("dataset", train_data=train_data, cache_dir=cache, device=CPU, options=TINY)
    assert again.weights_hash == ext.weights_hash and again.fidelity_name == ext.fidelity_name
    with pytest.raises(AssertionError, match="already taken"):
        bf.register_with_fidelity(ext.fidelity_name, bf.inception_class())
    assert torch.equal(again.features(train_data.images[:10]), feats)

    # Other images or another config give another fingerprint, hence a retrain.
    assert bf.classifier_fingerprint(train_data.subset(299), bf.DatasetCNNConfig(**TINY)) != bf.classifier_fingerprint(
        train_data, bf.DatasetCNNConfig(**TINY)
    )
    assert bf.classifier_fingerprint(train_data, bf.DatasetCNNConfig(**{**TINY, "seed": 1})) != (
        bf.classifier_fingerprint(train_data, bf.DatasetCNNConfig(**TINY))
    )


def test_fidelity_contract_requested_order(train_data: ImageData, cache: Path) -> None:
    from torch_fidelity.utils import create_feature_extractor

    ext = load_extractor("dataset", train_data=train_data, cache_dir=cache, device=CPU, options=TINY)
    fe = create_feature_extractor(
        ext.fidelity_name,
        ["logits", "feat"],
        cuda=False,
        feature_extractor_weights_path=str(ext.weights_path),
        verbose=False,
    )
    out = fe(train_data.images[:4])
    assert isinstance(out, tuple) and out[0].shape == (4, 3) and out[1].shape == (4, 72 + 16 + 32)
    assert torch.allclose(out[1], ext.features(train_data.images[:4]), atol=1e-6)
    with pytest.raises(AssertionError, match="uint8"):
        fe(train_data.images[:4].float())


def test_dataset_extractor_needs_train_data(cache: Path) -> None:
    with pytest.raises(ConfigError, match="training split"):
        load_extractor("dataset", train_data=None, cache_dir=cache, device=CPU)
    with pytest.raises(ConfigError, match="unknown feature extractor 'incepton'.*did you mean 'inception'"):
        load_extractor("incepton", train_data=None, cache_dir=cache, device=CPU)


def test_inception_missing_weights_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(ConfigError) as err:
        load_extractor("inception", train_data=None, cache_dir=tmp_path, device=CPU)
    msg = str(err.value)
    assert INCEPTION_FILE in msg and str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "weights_path" in msg and INCEPTION_ENV in msg and "never downloads" in msg
    with pytest.raises(ConfigError, match="weights_path=/nowhere/w.pth"):
        load_extractor("auto", train_data=None, cache_dir=tmp_path, device=CPU, weights_path="/nowhere/w.pth")
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_FILE).exists()  # nothing fetched


def test_auto_falls_back_to_dataset_with_notice(
    train_data: ImageData,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="benchkit.metrics.features"):
        ext = load_extractor("auto", train_data=train_data, cache_dir=cache, device=CPU, options=TINY)
        load_extractor("auto", train_data=train_data, cache_dir=cache, device=CPU, options=TINY)  # said once
    assert ext.tag.startswith("dataset-fused@")
    notices = [r.getMessage() for r in caplog.records if "no Inception-V3 weights" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]


def test_inception_loads_offline_from_file(
    random_inception: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch_fidelity.utils import create_feature_extractor

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    ext = load_extractor(
        "inception", train_data=None, cache_dir=tmp_path, device=CPU, weights_path=str(random_inception)
    )
    assert re.fullmatch(r"inception-v3@[0-9a-f]{8}", ext.tag)  # not the standard weights: the tag says so
    assert ext.num_classes is None and ext.weights_hash[:16] in ext.fidelity_name
    images = _patterns(2, 1, "test").images
    feats, logits = ext.features_and_logits(images)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008) and torch.isfinite(feats).all()
    # torch-fidelity builds the same network under the registered name from the same file.
    fe = create_feature_extractor(
        ext.fidelity_name, ["2048"], cuda=False, feature_extractor_weights_path=str(random_inception), verbose=False
    )
    with torch.no_grad():
        assert torch.allclose(fe(images)[0], feats, rtol=1e-4, atol=1e-5)

    # The env var and the torch.hub cache path are found too (no module load: resolution only).
    monkeypatch.setenv(INCEPTION_ENV, str(random_inception))
    assert load_extractor("auto", train_data=None, cache_dir=tmp_path, device=CPU).tag == ext.tag
    monkeypatch.delenv(INCEPTION_ENV)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / INCEPTION_FILE).symlink_to(random_inception)
    assert load_extractor("inception", train_data=None, cache_dir=tmp_path, device=CPU).weights_hash == ext.weights_hash


def test_truncated_weights_give_config_error(random_inception: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(random_inception.read_bytes()[:4096])
    ext = load_extractor("inception", train_data=None, cache_dir=tmp_path, device=CPU, weights_path=str(broken))
    with pytest.raises(ConfigError, match="truncated"):
        ext.features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_blocks_are_standardised_and_tag_follows_the_network(train_data: ImageData, cache: Path) -> None:
    from benchkit.metrics.featurenet import FEATURE_SCALE
    from benchkit.metrics.quality import reference_stats

    opts = {**TINY, "colour_weight": 2.0, "edge_weight": 0.5}
    ext = load_extractor("dataset", train_data=train_data, cache_dir=cache, device=CPU, options=opts)
    feats = ext.features(train_data.images[:270]).double()  # the images the standardisation was fitted on
    net = ext.module.net
    for name, weight in (("colour", 2.0), ("edges", 0.5), ("cnn", 1.0)):
        block = feats[:, net.blocks[name]]
        assert block.mean(0).abs().max() < 1e-3 * FEATURE_SCALE
        assert block.var(0).sum().item() == pytest.approx((FEATURE_SCALE * weight) ** 2, rel=1e-3)
    # Another weighting is another network: new weights file, tag and torch-fidelity name, new reference cache.
    base = load_extractor("dataset", train_data=train_data, cache_dir=cache, device=CPU, options=TINY)
    assert ext.tag != base.tag and ext.fidelity_name != base.fidelity_name and ext.weights_path != base.weights_path
    real = train_data.images[:20]
    first = reference_stats(real, base, cache_dir=cache, ref_key="k")
    other = reference_stats(real, ext, cache_dir=cache, ref_key="k")
    assert not other.loaded and other.path != first.path
    assert reference_stats(real, base, cache_dir=cache, ref_key="k").loaded


def _resave(path: Path, state: dict[str, torch.Tensor], extra_meta: dict[str, str]) -> None:
    """Rewrite a cached feature network with ``state`` (its metadata plus ``extra_meta``) and update the file hash
    its json records, as a rebuild that writes the same tensors into a differently ordered header would."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from benchkit.core.files import file_sha256

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(state, str(path), metadata={**extra_meta, **meta})
    jpath = path.with_suffix(".json")
    record = json.loads(jpath.read_text())
    record["weights_sha256"] = file_sha256(path)
    jpath.write_text(json.dumps(record))


def test_tag_covers_the_tensors_not_the_file(train_data: ImageData, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from benchkit.core.files import file_sha256
    from benchkit.metrics.quality import reference_stats

    def load(cache: Path) -> bf.Extractor:
        return load_extractor("dataset", train_data=train_data, cache_dir=cache, device=CPU, options=TINY)

    a, b = load(tmp_path / "a"), load(tmp_path / "b")  # two builds with the same seed (and thread count)
    state = load_file(a.weights_path)
    rebuilt = load_file(b.weights_path)
    assert sorted(state) == sorted(rebuilt) and all(torch.equal(state[k], rebuilt[k]) for k in state)
    assert b.tag == a.tag and b.fidelity_name == a.fidelity_name and a.info["feature_sha256"] == a.weights_hash
    real = train_data.images[:20]
    first = reference_stats(real, a, cache_dir=tmp_path / "a", ref_key="k")
    assert reference_stats(real, b, cache_dir=tmp_path / "a", ref_key="k").loaded  # the rebuild reuses them

    # Same tensors, other file bytes (header order, metadata): same tag, cached statistics still reused.
    before = file_sha256(a.weights_path)
    _resave(a.weights_path, state, {"note": "same tensors"})
    same = load(tmp_path / "a")
    assert file_sha256(a.weights_path) != before and same.tag == a.tag
    assert reference_stats(real, same, cache_dir=tmp_path / "a", ref_key="k").loaded

    # One weight changed by 1e-3: another tag and torch-fidelity name; the old statistics are not reused.
    changed = dict(state)
    w = changed["classifier.body.0.weight"].clone()
    w.view(-1)[0] += 1e-3
    changed["classifier.body.0.weight"] = w
    _resave(a.weights_path, changed, {})
    other = load(tmp_path / "a")
    assert other.tag != a.tag and other.fidelity_name != a.fidelity_name
    fresh = reference_stats(real, other, cache_dir=tmp_path / "a", ref_key="k")
    assert not fresh.loaded and fresh.path != first.path


def test_feature_digest_covers_standardisation_and_block_weights(train_data: ImageData, cache: Path) -> None:
    from safetensors.torch import load_file

    ext = load_extractor("dataset", train_data=train_data, cache_dir=cache, device=CPU, options=TINY)
    state, weights = load_file(ext.weights_path), featurenet.block_weights(bf.DatasetCNNConfig(**TINY))
    digest = featurenet.feature_digest(state, weights)
    assert digest == ext.weights_hash
    assert featurenet.feature_digest(dict(reversed(list(state.items()))), weights) == digest  # order-free
    assert featurenet.feature_digest({**state, "scale": state["scale"] * 1.001}, weights) != digest
    assert featurenet.feature_digest(state, {**weights, "colour": 1.3}) != digest
    with mock.patch.object(featurenet, "CACHE_VERSION", featurenet.CACHE_VERSION + 1):
        assert featurenet.feature_digest(state, weights) != digest
