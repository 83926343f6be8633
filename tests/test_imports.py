"""The import graph of the package: layers import downwards only, and no module-level cycle.

Layers, lowest first (a module may import its own package and any lower layer; imports inside
functions count too, ``if TYPE_CHECKING:`` blocks do not): the runtime and the engines never
reach training, recipes, data or a method family; measurement never reaches training; ``core``
reaches nothing above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
RANK = {
    "_files": 0,
    "_lazy": 0,
    "core": 1,
    "runtime": 2,
    "models": 2,
    "data": 2,
    "export": 3,
    "engines": 4,
    "measure": 5,
    "train": 6,
    "api": 7,
    "binary": 8,
    "prune": 8,
    "quant": 8,
    "lowrank": 8,
    "distill": 8,
    "imported": 9,
    "recipe": 10,
    "search": 11,
    "cli": 12,
    "": 13,  # torchslim/__init__.py: the lazy public names
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "torchslim").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(name: str, mods: dict) -> str:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST, mods: dict, top_level: bool) -> set[str]:
    """torchslim modules imported by ``tree`` (module level only, or everywhere)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking(node) or (top_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
            return
        if isinstance(node, ast.Import):
            found.update(_resolve(a.name, mods) for a in node.names if a.name.startswith("torchslim"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torchslim"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.add(full if full in mods else _resolve(node.module, mods))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph(top_level: bool) -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(ast.parse(p.read_text()), mods, top_level) - {m, "torchslim"} for m, p in mods.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
    """Catches: a new package added without a place in the order (its imports would go unchecked)."""
    assert {_layer(m) for m in _modules()} <= set(RANK)


def test_imports_go_downwards_only():
    """Catches: a wrong-way import, e.g. ``core`` importing training (``finetune`` in core.api did),
    measurement importing ``train`` for ``evaluate``, the runtime importing a method family."""
    wrong = sorted(
        f"{m} -> {t}"
        for m, targets in _graph(top_level=False).items()
        for t in targets
        if _layer(t) != _layer(m) and RANK[_layer(t)] >= RANK[_layer(m)]
    )
    assert not wrong, "imports against the layer order (tests/test_imports.py RANK):\n" + "\n".join(wrong)


def test_no_module_level_import_cycle():
    """Catches: modules that import each other when loaded (export.slim -> core.api -> train.loop ->
    export.slim was one), which breaks as soon as one of them is imported first."""
    graph = _graph(top_level=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
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

    for v in sorted(graph):
        if v not in index:
            connect(v)
    assert not cycles, f"module-level import cycles: {cycles}"
