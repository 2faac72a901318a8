"""The package's shape: no import cycle between files, small files and functions, no
module reaching into another's underscore names, and an architecture map that names
every module. Each rule is read off the source with `ast`, lazy imports included."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "sae_hooks"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {m for m, p in FILES.items() if p.name == "__init__.py"}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module if module in PACKAGES else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        base = base.rsplit(".", 1)[0]
    return f"{base}.{node.module}" if node.module else base


def imports(module: str) -> dict[str, set[str]]:
    """The sae_hooks modules `module` imports (anywhere in the file) -> the names taken."""
    tree = ast.parse(FILES[module].read_text())
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FILES:
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in FILES:  # `from sae_hooks.store import lock` imports a module
                    found.setdefault(sub, set())
                elif source in FILES:
                    found.setdefault(source, set()).add(alias.name)
    found.pop(module, None)
    return found


GRAPH = {m: imports(m) for m in FILES}


def _edges(m: str) -> set[str]:
    # A package's __init__ re-exports its modules: importing a name from it is an
    # edge to the package file only, and the package file's own re-exports are not
    # counted as edges back (they are the package's public face, not a dependency).
    return set(GRAPH[m]) - ({m} | ({d for d in GRAPH[m] if d.startswith(m + ".")}))


def test_the_walk_sees_imports():
    assert "sae_hooks.metrics" in GRAPH["sae_hooks.eval.reconstruction"] or any(
        "sae_hooks.metrics" in GRAPH[m] for m in FILES
    )
    assert len(FILES) > 50


def test_no_import_cycle_between_files():
    """Tarjan's strongly connected components over the file graph: every one is a single file."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(_edges(v)):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(FILES):
        if v not in index:
            connect(v)
    assert not cycles, "import cycles between files:\n" + "\n".join(map(" <-> ".join, cycles))


def test_no_file_over_the_limit():
    long = {
        m: n for m, p in FILES.items() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_the_limit():
    long = []
    for m, p in FILES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{m}.{node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_module_imports_another_modules_underscore_names():
    private = sorted(
        f"{m} imports {name} from {source}"
        for m in FILES
        for source, names in GRAPH[m].items()
        for name in names
        if name.startswith("_") and not name.startswith("__")
    )
    assert not private, "\n".join(private)


@pytest.mark.parametrize("name", ["fvu", "explained_variance", "l0"])
def test_one_definition_of_each_metric(name: str):
    """The metric's function is defined once; everything else calls it."""
    pattern = re.compile(rf"^\s*def {name}\(", re.M)
    where = [m for m, p in FILES.items() if pattern.search(p.read_text())]
    assert where == ["sae_hooks.metrics"], f"def {name}( in {where}"


def test_architecture_doc_names_every_module():
    doc = (REPO / "docs" / "architecture.md").read_text()
    table = "\n".join(line for line in doc.splitlines() if line.startswith("|"))
    missing = [
        m
        for m, p in FILES.items()
        if p.name not in ("__init__.py", "__main__.py")
        and f"`{p.relative_to(PACKAGE).as_posix()}`" not in table
    ]
    assert not missing, f"modules docs/architecture.md's table does not name: {missing}"
