"""Distortion battery: each distortion does what its name says, the battery's rows and the requirement checks."""

from __future__ import annotations

import pytest
import torch

from benchkit.data.base import ImageData
from benchkit.metrics import distortions as D
from benchkit.metrics.battery import DISTORTIONS, Battery, BatteryRow, check_requirements, run_battery


def _data(n: int = 60, k: int = 6, size: int = 12, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return ImageData("toy", "train", images, torch.arange(n) % k, tuple(f"c{i}" for i in range(k)))


def test_colour_and_contrast_distortions() -> None:
    x = _data().images
    grey = D.desaturate(x, 1.0).int()
    assert (grey.amax(1) - grey.amin(1)).max() <= 1  # all channels equal up to rounding
    assert torch.equal(D.desaturate(x, 0.0), x) and torch.equal(D.contrast(x, 1.0), x)
    flat = D.contrast(x, 0.0).float()
    assert flat.std(dim=(2, 3)).max() < 1.0  # no contrast left: one value per channel
    perm = D.permute_channels(x, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(perm, x[:, [2, 0, 1]])
    half = D.permute_channels(x, 0.5, torch.Generator().manual_seed(0))
    changed = (half != x).flatten(1).any(1).float().mean()
    assert 0.2 < changed < 0.8
    cast = D.colour_cast(x, 0.3)
    assert (cast[:, 0].int() - x[:, 0].int()).float().mean() > 30 and torch.equal(cast[:, 1:], x[:, 1:])


def test_blur_noise_and_spatial_distortions() -> None:
    x = _data().images
    assert torch.equal(D.blur(x, 0.0), x)
    assert D.blur(x, 2.0).float().std() < x.float().std() * 0.6
    noisy = D.noise(x, 0.1, torch.Generator().manual_seed(0)).float() - x.float()
    assert 8 < noisy.std() < 14  # 0.1 in [-1,1] units is 12.75 grey levels (less where it clips)
    shifted = D.shift(x, 3)
    assert torch.equal(shifted[..., 3:, 3:], x[..., :-3, :-3]) and shifted.shape == x.shape
    assert torch.equal(D.crop_resize(x, 1.0), x)
    zoom = D.crop_resize(x, 0.5)
    assert zoom.shape == x.shape and not torch.equal(zoom, x)


def test_diversity_distortions() -> None:
    data = _data(n=120, k=6)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    kept = D.mode_drop(data.images, data.labels, 50, 0.5, 6, g())
    lookup = {bytes(im.numpy().tobytes()): int(lb) for im, lb in zip(data.images, data.labels)}
    classes = {lookup[bytes(im.numpy().tobytes())] for im in kept}
    assert len(kept) == 50 and len(classes) == 3
    # The same seed drops nested class sets at two strengths.
    fewer = {lookup[bytes(im.numpy().tobytes())] for im in D.mode_drop(data.images, data.labels, 50, 0.3, 6, g())}
    assert classes <= fewer and len(fewer) == 4
    collapsed = D.mode_collapse(data.images, 50, 5, g())
    assert len(collapsed) == 50 and len(torch.unique(collapsed.flatten(1), dim=0)) == 5
    skewed = D.class_imbalance(data.images, data.labels, 100, 0.9, 6, g())
    counts = torch.bincount(torch.tensor([lookup[bytes(im.numpy().tobytes())] for im in skewed]), minlength=6)
    assert counts.max() >= 90 and len(skewed) == 100


class _MeanColour:
    """A stand-in feature network: per-channel means and stds (sees colour and contrast, not structure)."""

    tag = "mean-colour"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def test_run_battery_rows_and_errors() -> None:
    train, test = _data(n=80, seed=0), _data(n=80, seed=1)
    battery = run_battery(train, test, _MeanColour(), n=40)  # type: ignore[arg-type]
    expected = 1 + sum(len(spec[2]) for spec in DISTORTIONS.values())
    assert len(battery.rows) == expected and battery.rows[0]["distortion"] == "baseline"
    assert battery.n == 40 and battery.features == "mean-colour" and battery.dataset == "toy"
    assert battery.fid("desaturation", 1.0) > 5 * battery.baseline  # colour features see a grey image
    assert all(r["ratio"] == pytest.approx(r["fid"] / battery.baseline) for r in battery.rows)
    again = run_battery(train, test, _MeanColour(), n=40)  # type: ignore[arg-type]
    assert [r["fid"] for r in again.rows] == [r["fid"] for r in battery.rows]  # seeded
    with pytest.raises(ValueError, match="at least 20"):
        run_battery(train.subset(10), test, _MeanColour(), n=40)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown distortions.*valid: desaturation"):
        run_battery(train, test, _MeanColour(), n=40, only=("blurr",))  # type: ignore[arg-type]


def _battery(fids: dict[tuple[str, float], float], dataset: str = "toy") -> Battery:
    rows = [BatteryRow(family="baseline", distortion="baseline", unit="", strength=0.0, fid=1.0, ratio=1.0)]
    for (name, s), f in fids.items():
        rows.append(BatteryRow(family="x", distortion=name, unit="", strength=s, fid=f, ratio=f))
    return Battery(rows, 10, "f", dataset)


def test_check_requirements_pass_fail_and_symmetries() -> None:
    good = {
        ("noise", 0.02): 2.0,
        ("noise", 0.1): 20.0,
        ("blur", 0.5): 1.5,
        ("blur", 2.0): 30.0,
        ("mode drop", 0.3): 8.0,
        ("mode drop", 0.5): 15.0,
        ("desaturation", 1.0): 12.0,
        ("channel permutation", 0.5): 1.0,
        ("channel permutation", 1.0): 1.1,
    }
    by_req = {c.requirement: c.passed for c in check_requirements(_battery(good), symmetries=("channel permutation",))}
    assert all(by_req.values()) and "channel permutation 1 >= 10x baseline" not in by_req
    assert "noise 0.02 < desaturation 1" in by_req and "blur 0.5 < mode drop 0.5" in by_req
    failing = check_requirements(_battery(good), symmetries=())
    assert {c.requirement for c in failing if not c.passed} == {
        "channel permutation 1 >= 10x baseline",
        "noise 0.02 < channel permutation 1",
        "blur 0.5 < channel permutation 1",
    }
    # ``shapes`` draws hues uniformly: a channel permutation is one of its symmetries by default.
    assert all(c.passed for c in check_requirements(_battery(good, dataset="shapes")))
    weak = {**good, ("noise", 0.1): 1.5}
    failed = {c.requirement for c in check_requirements(_battery(weak), symmetries=()) if not c.passed}
    assert {"noise 0.1 >= 10x baseline", "noise grows with strength"} <= failed


def test_sanity_cli_exit_code_follows_the_checks(tmp_path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    """``benchkit eval --sanity`` exits 1 when a requirement fails and 0 when all hold (feature network stubbed)."""
    import json
    from types import SimpleNamespace

    from benchkit.evaluation import commands
    from benchkit.metrics.battery import Check

    rows = [BatteryRow(family="baseline", distortion="baseline", unit="", strength=0.0, fid=1.0, ratio=1.0)]
    battery = Battery(rows=rows, n=20, features="stub@0", dataset="shapes")
    monkeypatch.setattr(commands, "load_extractor", lambda *a, **k: SimpleNamespace(tag="stub@0"))
    args = ["eval", "--sanity", "--out-dir", str(tmp_path), "--set", "data.options={num_train = 20, num_test = 20}"]
    for passed, code in ((False, 1), (True, 0)):
        checks = [Check("r", passed, "x")]
        monkeypatch.setattr(commands, "sanity_battery", lambda *a, checks=checks, **k: (battery, checks))
        got, _, err = run_cli(args)
        assert got == code and ("1 battery requirement(s) fail" in err) == (not passed), err
        assert json.loads((tmp_path / "sanity" / "shapes-stub_0.json").read_text())["passed"] is passed
