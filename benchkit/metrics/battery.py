"""Distortion battery: how much FID a feature network charges for each kind of damage to real images.

Every row is the FID of ``n`` training images, distorted, against ``n`` held-out images of the same dataset; the
``baseline`` row leaves them undistorted, so only the sample-size bias of FID remains. Families, each at two or more
strengths (``distortions`` holds the functions): colour (desaturation, channel permutation, colour cast), contrast,
blur, noise, spatial (shift, crop-and-resize) and diversity (mode drop, mode collapse, class imbalance). The FID paper
checks its metric the same way, with disturbances of increasing strength (Heusel et al. 2017, arXiv 1706.08500).

A feature network is fit for ranking generators when (``check_requirements``):
1. every distortion at its strongest level raises FID at least ``min_ratio`` times over the baseline;
2. within each distortion FID grows with strength;
3. barely visible changes (noise std 0.02, blur sigma 0.5) cost less than semantic failures (half the classes
   dropped, full desaturation, channel permutation of every image).

A distortion that is a symmetry of the dataset (channel permutation on a dataset whose hues are uniformly
distributed, as in ``shapes``) leaves the distribution unchanged, so no faithful FID can charge for it; pass its name
in ``symmetries`` to leave it out of the checks. ``DATASET_SYMMETRIES`` lists the known ones.

Deviations:
- Distortions act on training images and are measured against the held-out split, not against the undistorted
  images themselves, so the baseline is the FID of two independent real samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

import torch

from benchkit.data.base import ImageData
from benchkit.metrics import distortions as D
from benchkit.metrics.extractor import Extractor
from benchkit.metrics.frechet import feature_stats, frechet_distance

# A distortion: (train data, n, strength, generator) -> n distorted uint8 images [n,3,H,W].
Distort = Callable[[ImageData, int, float, torch.Generator], torch.Tensor]


def _first(fn: Callable[..., torch.Tensor]) -> Distort:
    return lambda data, n, s, g: fn(data.images[:n], s)


def _first_g(fn: Callable[..., torch.Tensor]) -> Distort:
    return lambda data, n, s, g: fn(data.images[:n], s, g)


DISTORTIONS: dict[str, tuple[str, str, tuple[float, ...], Distort]] = {
    # name: (family, strength unit, strengths from weak to strong, function)
    "desaturation": ("colour", "amount", (0.5, 1.0), _first(D.desaturate)),
    "channel permutation": ("colour", "share of images", (0.5, 1.0), _first_g(D.permute_channels)),
    "colour cast": ("colour", "+red", (0.15, 0.3), _first(D.colour_cast)),
    "contrast": ("contrast", "1 - factor", (0.25, 0.5), lambda d, n, s, g: D.contrast(d.images[:n], 1 - s)),
    "blur": ("blur", "sigma px", (0.5, 1.0, 2.0), _first(D.blur)),
    "noise": ("noise", "std", (0.02, 0.05, 0.1), _first_g(D.noise)),
    "shift": ("spatial", "px", (2, 4), lambda d, n, s, g: D.shift(d.images[:n], int(s))),
    "crop-and-resize": ("spatial", "1 - kept side", (0.15, 0.3), lambda d, n, s, g: D.crop_resize(d.images[:n], 1 - s)),
    "mode drop": (
        "diversity",
        "share of classes",
        (0.3, 0.5),
        lambda d, n, s, g: D.mode_drop(d.images, d.labels, n, s, d.num_classes, g),
    ),
    "mode collapse": (
        "diversity",
        "distinct images",
        (200, 20),
        lambda d, n, s, g: D.mode_collapse(d.images, n, int(s), g),
    ),
    "class imbalance": (
        "diversity",
        "share of one class",
        (0.5, 0.9),
        lambda d, n, s, g: D.class_imbalance(d.images, d.labels, n, s, d.num_classes, g),
    ),
}
BARELY_VISIBLE: tuple[tuple[str, float], ...] = (("noise", 0.02), ("blur", 0.5))
SEMANTIC: tuple[tuple[str, float], ...] = (("mode drop", 0.5), ("desaturation", 1.0), ("channel permutation", 1.0))
DATASET_SYMMETRIES: dict[str, tuple[str, ...]] = {"shapes": ("channel permutation",)}  # hues drawn uniformly


class BatteryRow(TypedDict):
    """One distortion at one strength and its FID against the held-out images."""

    family: str
    distortion: str
    unit: str
    strength: float
    fid: float
    ratio: float  # FID / baseline FID


@dataclass(frozen=True)
class Battery:
    """The battery's rows (baseline first), its sample size, feature tag and dataset."""

    rows: list[BatteryRow]
    n: int
    features: str
    dataset: str

    @property
    def baseline(self) -> float:
        """FID of undistorted training images against the held-out images."""
        return self.rows[0]["fid"]

    def fid(self, distortion: str, strength: float) -> float:
        """The FID of one row."""
        for r in self.rows:
            if r["distortion"] == distortion and abs(r["strength"] - strength) < 1e-9:
                return r["fid"]
        raise KeyError(f"no battery row {distortion!r} at {strength}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return {
            "rows": self.rows,
            "n": self.n,
            "features": self.features,
            "dataset": self.dataset,
            "baseline": self.baseline,
        }


def run_battery(
    train: ImageData,
    test: ImageData,
    extractor: Extractor,
    n: int = 2000,
    *,
    seed: int = 0,
    only: tuple[str, ...] | None = None,
) -> Battery:
    """FID of ``n`` distorted training images against ``n`` held-out images, for every row of ``DISTORTIONS``."""
    n = min(n, len(train), len(test))
    if n < 20:
        raise ValueError(f"the distortion battery needs at least 20 images per split, got {n}")
    unknown = sorted(set(only or ()) - set(DISTORTIONS))
    if unknown:
        raise ValueError(f"unknown distortions {unknown}; valid: {', '.join(DISTORTIONS)}")
    ref = feature_stats(extractor.features(test.images[:n]))

    def fid(images: torch.Tensor) -> float:
        return frechet_distance(*feature_stats(extractor.features(images)), *ref)

    base = fid(train.images[:n])
    rows = [BatteryRow(family="baseline", distortion="baseline", unit="", strength=0.0, fid=base, ratio=1.0)]
    for name, (family, unit, strengths, fn) in DISTORTIONS.items():
        if only is not None and name not in only:
            continue
        for s in strengths:
            # One seed per distortion: strengths share their random draws (nested dropped classes, one noise field).
            g = torch.Generator().manual_seed(seed)
            value = fid(fn(train, n, s, g))
            rows.append(
                BatteryRow(
                    family=family,
                    distortion=name,
                    unit=unit,
                    strength=float(s),
                    fid=value,
                    ratio=value / max(base, 1e-12),
                )
            )
    return Battery(rows=rows, n=n, features=extractor.tag, dataset=train.name)


@dataclass(frozen=True)
class Check:
    """One requirement on the battery and whether it holds."""

    requirement: str
    passed: bool
    detail: str


def check_requirements(
    battery: Battery, *, min_ratio: float = 10.0, symmetries: tuple[str, ...] | None = None
) -> list[Check]:
    """The three requirements of the module docstring, one Check per distortion (or pair); ``symmetries`` defaults
    to ``DATASET_SYMMETRIES`` of the battery's dataset."""
    skip = set(DATASET_SYMMETRIES.get(battery.dataset, ()) if symmetries is None else symmetries)
    by_name: dict[str, list[BatteryRow]] = {}
    for r in battery.rows[1:]:
        by_name.setdefault(r["distortion"], []).append(r)
    checks: list[Check] = []
    for name, rows in by_name.items():
        if name in skip:
            continue
        strongest = rows[-1]
        checks.append(
            Check(
                f"{name} {strongest['strength']:g} >= {min_ratio:g}x baseline",
                strongest["ratio"] >= min_ratio,
                f"{strongest['ratio']:.1f}x",
            )
        )
        fids = [r["fid"] for r in rows]
        checks.append(
            Check(
                f"{name} grows with strength",
                all(a < b for a, b in zip(fids, fids[1:])),
                " < ".join(f"{f:.3g}" for f in fids),
            )
        )
    present = {(r["distortion"], r["strength"]) for r in battery.rows}
    for small, s_small in BARELY_VISIBLE:
        for big, s_big in SEMANTIC:
            if big in skip or (small, s_small) not in present or (big, s_big) not in present:
                continue
            a, b = battery.fid(small, s_small), battery.fid(big, s_big)
            checks.append(Check(f"{small} {s_small:g} < {big} {s_big:g}", a < b, f"{a:.3g} vs {b:.3g}"))
    return checks


def battery_table(battery: Battery, checks: list[Check] | None = None) -> list:
    """Rich renderables: the battery table and, when given, the requirement checks."""
    from rich.table import Table

    table = Table(title=f"FID battery: {battery.dataset}, features {battery.features}, n={battery.n}")
    for col, justify in (
        ("family", "left"),
        ("distortion", "left"),
        ("strength", "right"),
        ("FID", "right"),
        ("x baseline", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in battery.rows:
        strength = f"{r['strength']:g} {r['unit']}" if r["unit"] else ""
        table.add_row(r["family"], r["distortion"], strength, f"{r['fid']:.4g}", f"{r['ratio']:.1f}")
    out: list = [table]
    if checks is not None:
        ct = Table(title=f"requirements: {sum(c.passed for c in checks)} of {len(checks)} hold")
        for col in ("requirement", "holds", "measured"):
            ct.add_column(col)
        for c in checks:
            ct.add_row(c.requirement, "yes" if c.passed else "NO", c.detail)
        out.append(ct)
    return out
