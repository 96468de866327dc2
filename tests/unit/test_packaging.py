"""Packaging: the component folders install under benchkit, never as top-level packages."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_tokenizers_is_not_ours(tmp_path: Path) -> None:
    """Outside the source tree, `tokenizers` is absent or someone else's; ours is benchkit.tokenizers."""
    code = (
        "import importlib.util as u; s = u.find_spec('tokenizers'); print(s.origin if s else None); "
        "import benchkit.tokenizers as t; print(t.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    top, ours = out.stdout.split()
    assert top == "None" or not Path(top).resolve().is_relative_to(REPO), top
    assert Path(ours).resolve() == REPO / "tokenizers" / "__init__.py"


@pytest.mark.slow
def test_wheel_puts_components_under_benchkit(tmp_path: Path) -> None:
    """A plain (non-editable) build: every module lives under benchkit/, presets and sweeps included."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("benchkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("benchkit-")}
    assert tops == {"benchkit"}, tops
    for needed in (
        "benchkit/tokenizers/vq.py",
        "benchkit/generators/mar.py",
        "benchkit/heads/diffloss.py",
        "benchkit/configs/tiny.toml",
        "benchkit/configs/sweeps/tiny.toml",
        "benchkit/templates/report.html.j2",
    ):
        assert needed in names, needed


@pytest.mark.parametrize("name", ["tokenizers", "generators", "heads"])
def test_repo_root_does_not_shadow_installed_packages(tmp_path: Path, name: str) -> None:
    """Started in the repository root, `import tokenizers` loads the installed package (here a stand-in with a
    submodule, as Hugging Face's has), never the repository's folder; benchkit's own package still works."""
    stand_in = tmp_path / "site" / name
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("from .core import WHO\n")
    (stand_in / "core.py").write_text("WHO = 'stand-in'\n")
    code = (
        f"import {name}; print({name}.WHO, {name}.__file__); "
        "from benchkit.core.registry import TOKENIZERS, GENERATORS, HEADS; "
        "print(TOKENIZERS.names(), GENERATORS.names(), HEADS.names())"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    first, second = out.stdout.splitlines()
    assert first.split() == ["stand-in", str(stand_in / "__init__.py")]
    from benchkit.core.registry import GENERATORS, HEADS, TOKENIZERS  # the same registries, loaded in this process

    assert second == f"{TOKENIZERS.names()} {GENERATORS.names()} {HEADS.names()}"
    assert "vq" in second and "mar" in second and "diffloss" in second
    # without an installed package of that name the import fails as it does outside the repository
    env.pop("PYTHONPATH")
    bare = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bare.returncode == 1 and f"No module named '{name}'" in bare.stderr
