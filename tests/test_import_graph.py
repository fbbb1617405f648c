"""The package's import graph: no circles, arrows only downwards, no imports hidden in functions to dodge either.

Read from the source with ``ast`` (nothing is imported), so a circle that only bites in some import
order is caught as well as one that bites always.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kd_lightning"

# Floors, lowest first: a module imports from its own floor or lower ones, never from a higher one.
# A module is placed by its longest matching prefix.
FLOORS: tuple[tuple[str, ...], ...] = (
    (
        "kd_lightning.errors",
        "kd_lightning.outputs",
        "kd_lightning._distributed",
        "kd_lightning.safe_load",
        # Atomic checkpoint files and the run-folder lock: plain file handling that prepare and fit share.
        "kd_lightning.checkpointing",
        "kd_lightning.run_lock",
    ),
    ("kd_lightning.text",),  # token-id inputs and tokenizers: what text models and data both read
    ("kd_lightning.data", "kd_lightning.models", "kd_lightning.losses", "kd_lightning.metrics", "kd_lightning.optim"),
    ("kd_lightning.cache", "kd_lightning.callbacks"),
    ("kd_lightning.modules",),
    (
        "kd_lightning.loading",
        "kd_lightning.report",
        "kd_lightning.export",
        "kd_lightning.user_imports",
        "kd_lightning.quickstart",
    ),
    ("kd_lightning.cli", "kd_lightning.typed_commands", "kd_lightning.__main__", "kd_lightning"),
)

# Function-level imports of kd_lightning modules that are allowed, each for an optional heavy
# third-party dependency the imported module needs: ``kd_lightning.data`` serves the streaming
# DataModule and ``prepare_dataset`` on first use (PEP 562 ``__getattr__``), so in-memory users
# never import LitData and its object-storage clients.
LAZY_OPTIONAL = {
    ("kd_lightning.data", "kd_lightning.data.streaming"),
    ("kd_lightning.data", "kd_lightning.data.prepare"),
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    in_function: bool
    line: int


def _modules(root: Path) -> dict[str, Path]:
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _nearest(name: str, modules: dict[str, Path]) -> str | None:
    """The module ``name`` lives in: itself, or the package a ``from package import attribute`` reads."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]) -> list[str]:
    """The kd_lightning modules one import statement reads (not the parent packages Python runs first)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        # ``from package import name``: a submodule if there is one, else an attribute of the package.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = [_nearest(name, modules) for name in names if name.split(".")[0] == "kd_lightning"]
    return [name for name in found if name is not None]


def _edges(root: Path = PACKAGE) -> list[Edge]:
    modules = _modules(root)
    edges = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                in_function.update(id(inner) for inner in ast.walk(node) if inner is not node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(node, package, modules):
                    if target != name:
                        edges.append(Edge(name, target, id(node) in in_function, node.lineno))
    return edges


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _floor(module: str) -> int:
    matches = [
        (len(prefix), level)
        for level, prefixes in enumerate(FLOORS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is on no floor: add it to FLOORS in {Path(__file__).name}"
    return max(matches)[1]


def test_the_graph_is_read_from_real_imports():
    edges = {(e.source, e.target) for e in _edges()}
    # Spot checks that the parser resolves absolute, package-attribute and submodule imports.
    assert ("kd_lightning.cli", "kd_lightning.checkpointing") in edges
    assert ("kd_lightning.loading", "kd_lightning.data") in edges  # from kd_lightning import data
    assert ("kd_lightning.modules.distiller", "kd_lightning.data.calibration") in edges
    assert len(edges) > 100


def test_no_circles():
    edges = list(_edges())
    assert _cycles(edges) == []


def test_no_import_runs_up_a_floor():
    upward = [
        f"{e.source} (floor {_floor(e.source)}) imports {e.target} (floor {_floor(e.target)}), line {e.line}"
        for e in _edges()
        if _floor(e.source) < _floor(e.target)
    ]
    assert upward == []


def test_no_function_level_imports_of_the_package():
    hidden = [
        f"{e.source}:{e.line} imports {e.target} inside a function"
        for e in _edges()
        if e.in_function and (e.source, e.target) not in LAZY_OPTIONAL
    ]
    assert hidden == []


def test_the_checks_catch_a_circle_and_a_hidden_import(tmp_path):
    root = tmp_path / "kd_lightning"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from kd_lightning.sub.b import B\n")
    (root / "sub" / "a.py").write_text("from kd_lightning.sub import b\nA = 1\n")
    (root / "sub" / "b.py").write_text("import torch\n\ndef f():\n    from .a import A\n    return A\n\nB = 2\n")
    edges = _edges(root)
    assert {(e.source, e.target, e.in_function) for e in edges} == {
        ("kd_lightning.sub", "kd_lightning.sub.b", False),
        ("kd_lightning.sub.a", "kd_lightning.sub.b", False),
        ("kd_lightning.sub.b", "kd_lightning.sub.a", True),
    }
    assert _cycles(edges) == [["kd_lightning.sub.a", "kd_lightning.sub.b"]]
