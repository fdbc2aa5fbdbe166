"""No import cycles among the project's own modules (``ulmfit_core`` and ``search``).

A cycle makes what a module holds depend on which module of the cycle was imported first (a name
not defined yet, half-initialised modules in a worker process), and ties the cheap parts (configs,
the zoo's names) to the heavy ones (torch, Ray). Every ``import`` and ``from ... import`` counts,
a function's lazy import included: it still makes the one module need the other. Imports under
``if TYPE_CHECKING:`` do not (they never run). ``from pkg import name`` is an edge to ``pkg.name``
when that is a module, else to ``pkg``; relative imports are resolved against the importing
module's package. An import is an edge to the module named, not also to its parent packages.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ulmfit_core", "search")

#: module -> {imported module: the first line importing it}
Graph = dict[str, dict[str, int]]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node`` (functions and classes included), but not those in an
    ``if TYPE_CHECKING:`` body (its ``else:`` runs, and counts)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _runtime_imports(ast.Module(body=[stmt], type_ignores=[]))
        else:
            yield from _runtime_imports(child)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from`` import names (``from ..x import y`` in ``a.b.c`` is ``a.x``)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(source: str, module: str, is_package: bool, modules: Iterable[str]) -> dict[str, int]:
    """The project modules (of ``modules``) that ``source``, module ``module``, imports: name -> first line."""
    known = set(modules)
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in known:  # `import a.b.attr`-like names: the module they are in
            target = target.rpartition(".")[0]
        if target and target != module:
            found.setdefault(target, line)

    for node in _runtime_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        else:
            base = _absolute(node, module, is_package)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node.lineno)
    return dict(sorted(found.items()))


def project_sources(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def import_graph(root: Path = ROOT) -> Graph:
    sources = project_sources(root)
    return {m: imports_of(p.read_text(), m, p.name == "__init__.py", sources) for m, p in sources.items()}


def cycles(graph: Graph, limit: int = 200) -> list[list[str]]:
    """Elementary cycles, each starting at its smallest module (``[a, b, a]``), shortest first; at most ``limit``."""
    found: list[list[str]] = []
    for start in sorted(graph):
        # Only cycles whose smallest module is `start`: each is found once.
        stack = [(start, [start])]
        while stack and len(found) < limit:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, {}), reverse=True):
                if nxt == start:
                    found.append([*path, start])
                elif nxt > start and nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    return sorted(found, key=lambda c: (len(c), c))


def describe(cycle: list[str], graph: Graph, sources: dict[str, Path], root: Path = ROOT) -> str:
    where = ", ".join(f"{sources[a].relative_to(root).as_posix()}:{graph[a][b]}" for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)}   ({where})"


# --- the graph builder itself ----------------------------------------------------------------


def test_imports_resolve_relative_lazy_and_submodule_imports():
    modules = ["pkg", "pkg.zoo", "pkg.config", "pkg.sub", "pkg.sub.a", "pkg.sub.b", "other"]
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from . import b\n"  # 4: a submodule of this module's package
        "from ..config import X\n"  # 5: a name in a module, two levels up
        "from pkg import zoo\n"  # 6: a submodule, absolute
        "if TYPE_CHECKING:\n"
        "    from pkg.zoo import T\n"  # not counted
        "else:\n"
        "    import other\n"  # 10: counted
        "def f():\n"
        "    from .. import sub, nothing\n"  # 12: lazy; `nothing` is not a module: an edge to `pkg`
        "    import pkg.config.attr\n"  # 13: the module the dotted name is in (already imported)
    )
    found = imports_of(source, "pkg.sub.a", is_package=False, modules=modules)
    assert found == {"other": 10, "pkg": 12, "pkg.config": 5, "pkg.sub": 12, "pkg.sub.b": 4, "pkg.zoo": 6}
    # In a package's __init__, `.` is the package itself.
    found = imports_of("from . import a\nfrom .b import c\nfrom .. import zoo\n", "pkg.sub", True, modules)
    assert found == {"pkg.sub.a": 1, "pkg.sub.b": 2, "pkg.zoo": 3}
    found = imports_of("from . import config\n", "pkg.zoo", False, modules)
    assert found == {"pkg.config": 1}


def test_cycles_are_each_found_once():
    graph = {"a": {"b": 1}, "b": {"c": 1, "a": 2}, "c": {"a": 1}, "d": {"a": 1}, "e": {"d": 1}}
    assert cycles(graph) == [["a", "b", "a"], ["a", "b", "c", "a"]]


# --- the project -----------------------------------------------------------------------------


def test_no_import_cycles_in_ulmfit_core_or_search():
    graph, sources = import_graph(), project_sources()
    assert {"ulmfit_core.config", "ulmfit_core.zoo", "search.tuner"} <= set(graph)
    assert "ulmfit_core.config" in graph["ulmfit_core.corpus"]
    found = cycles(graph)
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(describe(c, graph, sources) for c in found)
