"""The package has no import cycles, counting the imports made inside functions.

A lazy import (one inside a function) hides a cycle from Python at import time, not from
the design: the two modules still depend on each other. This test reads every module of
``hookdoctor`` with ``ast``, takes each ``import`` and ``from ... import`` wherever it
stands (module level, functions, methods), leaves out only those under
``if TYPE_CHECKING:`` (annotations, never run), and looks for cycles with networkx.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import hookdoctor

PACKAGE = Path(hookdoctor.__file__).parent

# Cycles that exist and belong to work in progress elsewhere; each entry is the set of
# modules on the cycle. Remove an entry when its cycle is gone, never add one for new code.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return hidden


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may load: submodules where it names them, else the module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" for alias in node.names] + [source]


def import_graph() -> nx.DiGraph:
    """Module -> module it imports, for every module of hookdoctor, function-level imports included."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        hidden = _type_checking_only(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in hidden:
                continue
            names = _imported(node, module, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):
                # `from a.b import c`: the submodule a.b.c where there is one, else a.b itself
                submodules = [name for name in names[:-1] if name in modules]
                names = submodules or names[-1:]
            for name in names:
                target = owner(name)
                if target is not None and target != module:
                    graph.add_edge(module, target)
    return graph


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph()
    # render/summary.py imports model.unwrap inside a function only
    assert graph.has_edge("hookdoctor.render.summary", "hookdoctor.model.unwrap")
    # and an `if TYPE_CHECKING:` import is no edge: snippets.py names GradCAMSpec for annotations only
    assert not graph.has_edge("hookdoctor.specs.snippets", "hookdoctor.specs.gradcam")


def test_no_import_cycles() -> None:
    cycles = {frozenset(cycle): cycle for cycle in nx.simple_cycles(import_graph())}
    new = [" -> ".join([*cycle, cycle[0]]) for key, cycle in cycles.items() if key not in KNOWN_CYCLES]
    assert not new, "import cycles (lazy imports count):\n" + "\n".join(sorted(new))
