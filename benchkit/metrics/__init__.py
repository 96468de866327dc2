"""Metrics: feature networks, generation quality (torch-fidelity + clean-fid), reconstruction, cost, sanity checks.

Submodules load lazily (torch-fidelity and clean-fid import torchvision, which takes seconds):

- ``features``: ``load_extractor`` and the FEATURES registry entries ``inception``, ``dataset``, ``auto``.
- ``quality``: ``generation_metrics``, ``reference_stats``, ``fid_infinity``.
- ``recon``: ``psnr``, ``ssim``, ``codebook_usage``, ``bits_per_image``.
- ``cost``: ``count_params``, ``flops_per_call``, ``throughput``, ``latency``, ``peak_memory_mb``,
  ``matmul_peak_flops``.
- ``battery``: ``run_battery``, ``check_requirements`` (the distortion battery of a feature network).
- ``sanity``: ``sanity_battery``, ``save_sanity`` (``benchkit eval --sanity``).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("features", "quality", "recon", "cost", "battery", "sanity")
_EXPORTS = {
    "load_extractor": "features",
    "Extractor": "features",
    "generation_metrics": "quality",
    "reference_stats": "quality",
    "fid_infinity": "quality",
    "psnr": "recon",
    "ssim": "recon",
    "codebook_usage": "recon",
    "bits_per_image": "recon",
    "count_params": "cost",
    "flops_per_call": "cost",
    "throughput": "cost",
    "latency": "cost",
    "peak_memory_mb": "cost",
    "matmul_peak_flops": "cost",
    "run_battery": "battery",
    "check_requirements": "battery",
    "sanity_battery": "sanity",
    "save_sanity": "sanity",
}
__all__ = sorted([*_SUBMODULES, *_EXPORTS])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
