"""Code version and environment recorded next to every run (env.json) and embedded in results."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def git_state() -> dict[str, Any]:
    """Git SHA and dirty flag of the benchkit source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"git_sha": None, "git_dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return {"git_sha": sha.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions of python, torch, torch-fidelity, clean-fid, benchkit; device; argv; git state."""
    return {
        **git_state(),
        "benchkit": _version("benchkit"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_fidelity": _version("torch-fidelity"),
        "clean_fid": _version("clean-fid"),
        "cuda": torch.version.cuda,
        "device": str(device) if device is not None else None,
        "threads": torch.get_num_threads(),  # CPU float results depend on it (benchkit.core.threads)
        "platform": platform.platform(),
        "argv": sys.argv,
    }
