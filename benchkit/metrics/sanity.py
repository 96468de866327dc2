"""Sanity check of a feature network on real data: the distortion battery, its requirements, and a JSON record.

``benchkit eval --sanity`` runs ``sanity_battery`` on the configured dataset and feature network with
``eval.num_samples`` images per side (at least ``MIN_N``), prints the battery table and the requirement checks
(``benchkit.metrics.battery``) and saves both under ``OUT_DIR/sanity/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchkit.core.files import atomic_write_text
from benchkit.data.base import ImageData
from benchkit.metrics.battery import Battery, Check, check_requirements, run_battery
from benchkit.metrics.extractor import Extractor, safe_name

MIN_N = 2000  # FID's sample-size bias grows as 1/n: with fewer images per side it hides 10x differences


def sanity_battery(
    train: ImageData, test: ImageData, extractor: Extractor, n: int = MIN_N, *, seed: int = 0
) -> tuple[Battery, list[Check]]:
    """The distortion battery of ``extractor`` on max(n, MIN_N) train vs as many held-out images (fewer when a split
    is smaller), and its requirement checks."""
    battery = run_battery(train, test, extractor, max(n, MIN_N), seed=seed)
    return battery, check_requirements(battery)


def save_sanity(battery: Battery, checks: list[Check], out_dir: Path) -> Path:
    """Write the battery and its checks to ``out_dir/sanity/<dataset>-<features>.json``; returns the path."""
    root = Path(out_dir) / "sanity"
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{safe_name(battery.dataset)}-{safe_name(battery.features)}.json"
    record = {**battery.to_dict(), "checks": [c.__dict__ for c in checks], "passed": all(c.passed for c in checks)}
    atomic_write_text(path, json.dumps(record, indent=2))
    return path
