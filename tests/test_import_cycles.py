"""No import circles in src/, bench/ or fuzz/.

Every import of every module counts: at the top, inside a function (where a circle hides from
Python but not from the design) and under ``if TYPE_CHECKING:`` (a circle that only the type
checker sees still ties the modules together).  ``from package import name`` counts as an
import of ``package`` (its ``__init__``), and of ``package.name`` when that is a module.  A
package's ``__init__`` is not counted as imported by its submodules implicitly.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import REPO

ROOTS = (REPO / "src", REPO / "bench", REPO / "fuzz")


def _module_name(path: Path) -> str:
    root = REPO / "src" if path.is_relative_to(REPO / "src") else REPO
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for root in ROOTS:
        for path in root.rglob("*.py"):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def imported_names(path: Path, name: str, known: set[str] | None = None) -> set[str]:
    """What a module imports, anywhere in it, as absolute names.  ``from package import
    module`` imports the module, not the package's namespace; ``from package import name``
    (a name ``__init__`` defines) imports the package (``known``: the modules there are)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = {f"{source}.{alias.name}" for alias in node.names}
            names.update(submodules)
            if known is None or not submodules <= known:
                names.add(source)
    return names


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {
        name: {
            other for other in imported_names(path, name, known) if other in found and other != name
        }
        for name, path in found.items()
    }


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative: no recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_walker_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_walker_sees_imports_inside_functions_and_type_checking(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.a import A\n"
        "def f():\n    from pkg import b\n    import pkg.c\n"
        "from . import sibling\n"
    )
    names = imported_names(module, "pkg.m")
    assert {"pkg.a", "pkg", "pkg.b", "pkg.c", "pkg.sibling"} <= names


def test_no_import_circles_in_src_bench_and_fuzz():
    graph = import_graph()
    assert len(graph) > 100  # the walk found the modules
    assert circles(graph) == []
