"""overcomplete's own SAE tests, run against sae-hooks: every `from overcomplete.sae...`
import of a name that sae-hooks also defines is swapped to sae-hooks's, the rest
(train_sae, its losses, trackers, schedulers, QSAE / MpSAE / OMPSAE / RA-SAEs, which
sae-hooks does not have) stays overcomplete's. Not a test: overcomplete is not in
requirements.lock, and its tests are not in its wheel (they are in its repository).

    /work/venv-peers/bin/python bench/overcomplete_tests.py --tests path/to/overcomplete/tests

Runs from any Python that has overcomplete and pytest installed and sae_hooks on its
path (PYTHONPATH=. for a checkout). Prints pytest's summary and every failure's name.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# where sae-hooks keeps the names overcomplete's tests import, looked up in this order
OURS = (
    "sae_hooks.sae",
    "sae_hooks.sae.kernels",
    "sae_hooks.sae.encoder_modules",
    "sae_hooks.sae.encoders",
)


def _our_home(name: str) -> str | None:
    for module in OURS:
        if hasattr(importlib.import_module(module), name):
            return module
    return None


def swap_imports(source: str) -> tuple[str, list[str]]:
    """source with each `from overcomplete.sae[...] import a, b` split into the names
    sae-hooks has (imported from it) and the rest (still overcomplete's); also the
    names swapped."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    swapped: list[str] = []
    edits = []
    for node in tree.body:
        if not (
            isinstance(node, ast.ImportFrom) and (node.module or "").startswith("overcomplete.sae")
        ):
            continue
        ours: dict[str, list[str]] = {}
        theirs = []
        for alias in node.names:
            home = _our_home(alias.name)
            spelled = alias.name + (f" as {alias.asname}" if alias.asname else "")
            if home is None:
                theirs.append(spelled)
            else:
                ours.setdefault(home, []).append(spelled)
                swapped.append(alias.name)
        new = [f"from {home} import {', '.join(names)}\n" for home, names in ours.items()]
        if theirs:
            new.append(f"from {node.module} import {', '.join(theirs)}\n")
        edits.append((node.lineno - 1, node.end_lineno, "".join(new)))
    for start, end, text in reversed(edits):
        lines[start:end] = [text]
    return "".join(lines), swapped


# overcomplete/__init__.py imports its vision models (torchvision); the SAE tests need
# none of them, so the package is entered without running that file.
CONFTEST = """
import importlib.util, sys, types
spec = importlib.util.find_spec("overcomplete")
package = types.ModuleType("overcomplete")
package.__path__ = list(spec.submodule_search_locations)
sys.modules.setdefault("overcomplete", package)
"""


def prepare(tests: Path, into: Path) -> list[str]:
    """A copy of overcomplete's tests/ (package, utils, sae/) with the imports swapped."""
    (into / "conftest.py").write_text(CONFTEST)
    shutil.copytree(tests / "sae", into / "tests" / "sae")
    for name in ("__init__.py", "utils.py"):
        shutil.copy(tests / name, into / "tests" / name)
    swapped: set[str] = set()
    for path in sorted((into / "tests" / "sae").glob("test_*.py")):
        text, names = swap_imports(path.read_text())
        path.write_text(text)
        swapped.update(names)
    return sorted(swapped)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", required=True, type=Path, help="overcomplete's tests/ folder")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k batchtopk)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        swapped = prepare(args.tests, Path(tmp))
        print("swapped to sae-hooks:", ", ".join(swapped))
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf"]
        targets = [a for a in args.pytest_args if a.startswith("tests/")]
        if not targets:  # its CUDA file does not even collect without a GPU
            targets = ["tests/sae"] + (
                [] if _has_cuda() else ["--ignore=tests/sae/test_sae_cuda.py"]
            )
        cmd += targets + [a for a in args.pytest_args if a not in targets]
        return subprocess.run(cmd, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
