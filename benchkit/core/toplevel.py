"""Keep the repository's component folders from shadowing other packages when Python starts in the repo root.

The folders ``tokenizers/``, ``generators/`` and ``heads/`` are installed as ``benchkit.tokenizers`` and so on.
Started from the repository root, Python also finds them as top-level packages (the current directory comes first
on ``sys.path``), so ``import tokenizers`` would load benchkit's folder instead of Hugging Face ``tokenizers``
(which ``transformers`` imports). Each folder's ``__init__`` calls :func:`defer_to_installed` when imported under
its top-level name: the import then loads the installed package of that name, or fails as it would elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path


def defer_to_installed(name: str, init_file: str) -> None:
    """Load the installed top-level package ``name`` into ``sys.modules[name]``, searching every path entry but
    the repository holding ``init_file``; raise ModuleNotFoundError when there is none."""
    repo = Path(init_file).resolve().parent.parent
    path = [p for p in sys.path if Path(p or os.getcwd()).resolve() != repo]
    spec = None
    for finder in sys.meta_path:
        if finder is PathFinder:
            spec = PathFinder.find_spec(name, path)
        elif hasattr(finder, "find_spec"):
            spec = finder.find_spec(name, None)
        if spec is not None:
            break
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"No module named {name!r} (the folder {repo / name} is benchkit.{name}, not a top-level package)",
            name=name,
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the import statement returns this entry once the folder's __init__ finishes
    spec.loader.exec_module(module)
