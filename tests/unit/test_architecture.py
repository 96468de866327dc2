"""The package's layout holds: stages import only downward, no import cycles, own imports at module level.

The order of the stages (docs/architecture.md): a module may import its own package and the ones before it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# where each installed package's files live (the component folders sit at the repository's top level)
ROOTS = {"benchkit": REPO / "benchkit", **{f"benchkit.{c}": REPO / c for c in ("tokenizers", "generators", "heads")}}
ORDER = (
    "core",
    "nn",
    "data",
    "metrics",
    "components",
    "sampling",
    "training",
    "results",
    "evaluation",
    "sweeps",
    "importers",
    "cli",
)
COMPONENTS = ("tokenizers", "generators", "heads")


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            if prefix == "benchkit" and parts and parts[0] in COMPONENTS:
                continue
            out[".".join([prefix, *parts])] = path
    return out


MODULES = _modules()


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2 or module in ("benchkit.__main__",):
        return "root"
    return "components" if parts[1] in COMPONENTS else parts[1]


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported benchkit module, whether inside a function, line) for every import of benchkit in ``path``."""
    tree = ast.parse(path.read_text())
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("benchkit"):
            base = str(node.module)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("benchkit")]
        found += [(n, id(node) in in_function, node.lineno) for n in names if n in MODULES]
    return found


GRAPH = {m: _imports(p) for m, p in MODULES.items()}


def test_benchkit_root_holds_only_the_package_entry_points() -> None:
    assert sorted(p.name for p in (REPO / "benchkit").glob("*.py")) == ["__init__.py", "__main__.py"]
    stages = {p.name for p in (REPO / "benchkit").iterdir() if (p / "__init__.py").is_file()}
    assert stages == set(ORDER) - {"components"}, "a new stage package goes into ORDER and docs/architecture.md"


def test_stages_import_only_downward() -> None:
    rank = {s: i for i, s in enumerate(ORDER)}
    wrong = []
    for module, imports in GRAPH.items():
        src = _stage(module)
        for target, _, line in imports:
            dst = _stage(target)
            if src == "root" or dst == src or target == "benchkit":  # the package itself holds only __version__
                continue
            allowed = dst in ("core", "nn") if src == "components" else rank.get(dst, 99) < rank[src]
            if not allowed:
                wrong.append(f"{MODULES[module].relative_to(REPO)}:{line} ({src}) imports {target} ({dst})")
    assert not wrong, "imports against the stage order " + " < ".join(ORDER) + ":\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    edges = defaultdict(set)
    for module, imports in GRAPH.items():
        edges[module] |= {t for t, _, _ in imports if t != module}
    # Tarjan's strongly connected components; any component of two or more modules is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_own_imports_at_module_level_unless_marked_late() -> None:
    unmarked = []
    for module, imports in GRAPH.items():
        lines = MODULES[module].read_text().splitlines()
        for target, inside, line in imports:
            context = " ".join(lines[max(0, line - 2) : line + 1])
            if inside and "late:" not in context:
                unmarked.append(f"{MODULES[module].relative_to(REPO)}:{line} imports {target} inside a function")
    assert not unmarked, "import at module level, or say why it loads late with '# late: ...':\n" + "\n".join(unmarked)


@pytest.mark.parametrize("stage", ["core", "nn", "data", "metrics"])
def test_lower_stages_never_import_the_cli(stage: str) -> None:
    for module, imports in GRAPH.items():
        if _stage(module) == stage:
            assert not [t for t, _, _ in imports if _stage(t) == "cli"], module
