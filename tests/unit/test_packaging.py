"""Packaging: the component folders install under benchkit, never as top-level packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_import_tokenizers_is_not_ours(tmp_path: Path) -> None:
    """Outside the source tree, `tokenizers` is absent or someone else's; ours is benchkit.tokenizers."""
    code = ("import importlib.util as u; s = u.find_spec('tokenizers'); print(s.origin if s else None); "
            "import benchkit.tokenizers as t; print(t.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    top, ours = out.stdout.split()
    assert top == "None" or not Path(top).resolve().is_relative_to(REPO), top
    assert Path(ours).resolve() == REPO / "tokenizers" / "__init__.py"


@pytest.mark.slow
def test_wheel_puts_components_under_benchkit(tmp_path: Path) -> None:
    """A plain (non-editable) build: every module lives under benchkit/, presets and sweeps included."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("benchkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("benchkit-")}
    assert tops == {"benchkit"}, tops
    for needed in ("benchkit/tokenizers/vq.py", "benchkit/generators/mar.py", "benchkit/heads/diffloss.py",
                   "benchkit/configs/tiny.toml", "benchkit/configs/sweeps/tiny.toml",
                   "benchkit/templates/report.html.j2"):
        assert needed in names, needed
