"""The store package's shape: no import cycles, one reader protocol both readers satisfy."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing

import numpy as np
import pytest
import torch
from helpers import POINTS, REPO, D, make_batch

from sae_hooks.store import (
    ActivationLoader,
    ActivationStore,
    ShardedStore,
    StoreReader,
    StoreWriter,
    open_store,
)
from sae_hooks.store.layout import SHARDED_ATTR, open_group, rank_location

STORE = REPO / "sae_hooks" / "store"
MODULES = sorted(f"sae_hooks.store.{p.stem}" for p in STORE.glob("*.py") if p.stem != "__init__")


def store_imports(module: str) -> set[str]:
    """The sae_hooks.store modules `module` imports anywhere (lazy imports included)."""
    tree = ast.parse((STORE / f"{module.rsplit('.', 1)[1]}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "sae_hooks.store":  # `from sae_hooks.store import lock`
                found |= {f"sae_hooks.store.{a.name}" for a in node.names}
            elif node.module.startswith("sae_hooks.store."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sae_hooks.store.")}
    return found & set(MODULES)


def test_store_import_graph_has_no_cycle():
    graph = {m: store_imports(m) for m in MODULES}
    assert graph["sae_hooks.store.writer"] >= {"sae_hooks.store.commit"}  # the walk works
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, f"import cycle: {' -> '.join([*path[path.index(m) :], m])}"
        if m not in done:
            for dep in sorted(graph[m]):
                visit(dep, [*path, m])
            done.add(m)

    for m in MODULES:
        visit(m, [])


@pytest.mark.slow
def test_every_store_module_imports_on_its_own():
    """Each module first in a fresh set of sae_hooks modules: a cycle would fail here."""
    script = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    for m in [m for m in sys.modules if m.startswith('sae_hooks')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(" + repr(MODULES) + "))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", str(len(MODULES))]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One store of 6 input batches, and the same batches as a 2-rank sharded store."""
    base = tmp_path_factory.mktemp("stores")
    with StoreWriter(base / "single", points=POINTS, chunk_rows=16) as w:
        for i in range(6):
            w.append(make_batch(i))
    open_group(base / "sharded", "w-", attributes={SHARDED_ATTR: {"version": 1, "world_size": 2}})
    for rank, batches in enumerate([range(0, 4), range(4, 6)]):
        with StoreWriter(rank_location(base / "sharded", rank), points=POINTS, chunk_rows=16) as w:
            for i in batches:
                w.append(make_batch(i))
    return open_store(base / "single"), open_store(base / "sharded")


def protocol_members() -> set[str]:
    return {
        name for name in dir(StoreReader) if not name.startswith("_") or name == "__len__"
    } | set(typing.get_type_hints(StoreReader))


def test_both_readers_satisfy_the_protocol(stores):
    single, sharded = stores
    assert isinstance(single, ActivationStore) and isinstance(sharded, ShardedStore)
    members = protocol_members()
    assert {"n_rows", "read_tensor", "stats", "verify", "location"} <= members
    for store in stores:
        assert isinstance(store, StoreReader)
        assert all(hasattr(store, m) for m in members)
    assert not isinstance(object(), StoreReader)


def first_rows(store: StoreReader, point: str) -> np.ndarray:
    """A real use through the protocol alone: the loader, unshuffled, one epoch."""
    loader = ActivationLoader(store, point, 8, shuffle=False, val_fraction=0.0, drop_last=False)
    return torch.cat(list(loader)).numpy()


def test_a_protocol_user_reads_both_alike(stores):
    single, sharded = stores
    for p in POINTS:
        a, b = first_rows(single, p), first_rows(sharded, p)
        assert a.shape == (single.n_rows, D[p])
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, single.read(p))
        torch.testing.assert_close(sharded.stats(p).mean, single.stats(p).mean)
    np.testing.assert_array_equal(sharded.token_ids(), single.token_ids())
