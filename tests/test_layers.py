"""The package's import structure: no import cycles, and imports only downward through the layers.

Every `import` statement of every module under src/masklam counts, including the lazy ones inside functions
(a lazy import still ties the modules together; it only defers the cost). Layers, lowest first:

    0  masklam (the package __init__), errors, seeding, devices, metrics, files, args, resources, locks, methods,
       typecheck, renames
    1  envs, models
    2  experts
    3  data
    4  train, masks
    5  downstream
    6  quickstart, cli, __main__

A module may import its own subpackage or anything of a lower layer, never a higher one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "masklam"
RANKS: dict[str, int] = {
    "": 0, "errors": 0, "seeding": 0, "devices": 0, "metrics": 0, "files": 0, "args": 0,
    "resources": 0, "locks": 0, "typecheck": 0, "methods": 0, "renames": 0,
    "envs": 1, "models": 1,
    "experts": 2,
    "data": 3,
    "train": 4, "masks": 4,
    "downstream": 5,
    "quickstart": 6, "cli": 6, "__main__": 6,
}


def module_name(path: Path) -> str:
    """src/masklam/a/b.py -> masklam.a.b; src/masklam/a/__init__.py -> masklam.a."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package: {dotted name: file}."""
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module named by a (possibly relative) `from ... import`."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(known: dict[str, Path]) -> set[tuple[str, str]]:
    """(importer, imported) for every import of a package module, wherever it sits in the file."""
    edges: set[tuple[str, str]] = set()
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, name, path.name == "__init__.py")
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module mod
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
            for target in targets:
                while target and target not in known:  # `import masklam.a.b.c` of an attribute path
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add((name, target))
    return edges


def rank(module: str) -> int:
    """The layer of a module (by its first component below the package)."""
    top = module.split(".")[1] if "." in module else ""
    if top not in RANKS:
        raise AssertionError(f"{module} is in no layer; add its subpackage to RANKS in tests/test_layers.py")
    return RANKS[top]


def subpackage(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def upward_edges(edges: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Imports from a module into a higher layer (the package __init__ may import only layer 0)."""
    bad = []
    for src, dst in sorted(edges):
        if src == PACKAGE:
            if rank(dst) > 0:
                bad.append((src, dst))
        elif subpackage(src) != subpackage(dst) and rank(dst) > rank(src):
            bad.append((src, dst))
    return bad


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, list[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, []).append(dst)
        graph.setdefault(dst, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


@pytest.fixture(scope="module")
def edges() -> set[tuple[str, str]]:
    return import_edges(modules())


def test_the_edges_are_found(edges):
    # a lazy import inside a function counts, and `from pkg import module` names the module
    assert ("masklam.train.pretrain", "masklam.data") in edges  # lazy, inside _pretrain
    assert ("masklam.masks.command", "masklam.masks.sam2") in edges  # lazy `import masklam.masks.sam2 as ...`
    assert ("masklam.masks.distill", "masklam.masks.student") in edges  # lazy `from ... import`
    assert ("masklam.train.pretrain", "masklam.models.lam") in edges


def test_no_import_cycles(edges):
    found = cycles(edges)
    lines = []
    for component in found:
        members = set(component)
        lines.append(" <-> ".join(component) + ": " + ", ".join(
            f"{a} -> {b}" for a, b in sorted(edges) if a in members and b in members))
    assert not found, "import cycles:\n  " + "\n  ".join(lines)


def test_imports_only_go_down_the_layers(edges):
    bad = upward_edges(edges)
    assert not bad, "imports into a higher layer:\n  " + "\n  ".join(
        f"{a} (layer {rank(a)}) -> {b} (layer {rank(b)})" for a, b in bad)


def test_every_module_has_a_layer():
    for name in modules():
        rank(name)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    fake = {("masklam.models.lam", "masklam.train.augment"), ("masklam.train.augment", "masklam.models.lam"),
            ("masklam", "masklam.data"), ("masklam.data.collect", "masklam.data.hdf5")}
    assert cycles(fake) == [["masklam.models.lam", "masklam.train.augment"]]
    assert upward_edges(fake) == [("masklam", "masklam.data"), ("masklam.models.lam", "masklam.train.augment")]
