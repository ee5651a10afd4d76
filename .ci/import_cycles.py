"""Import circles inside each package: module A imports B (directly or through others) and B imports A.

Every import counts, including the ones under ``if TYPE_CHECKING:`` and inside functions: a circle made for type
hints is still a circle a reader must hold in mind. Run ``python .ci/import_cycles.py`` (exit 1 on a circle); the
``dag`` nox session calls :func:`check_import_cycles`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of ``known`` that the module ``name`` imports (``from a import b`` counts ``a.b`` if it is one)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # a package's __init__ is not the module we mean when a submodule of it is named
            if target in known:
                found.add(target)
                continue
            while "." in target:
                target = target.rpartition(".")[0]
                if target in known:
                    found.add(target)
                    break
    found.discard(name)
    return found


def package_graph(src: Path) -> dict[str, set[str]]:
    files = {module_name(path, src): path for path in sorted(src.rglob("*.py"))}
    known = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = imported_modules(tree, name, path.name == "__init__.py", known)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan), modules sorted, ignoring package ``__init__``
    modules: importing a package runs its ``__init__``, which re-exports its submodules, so every submodule that
    imports a sibling by its package name would otherwise look circular."""
    packages = {name for name in graph if any(other.startswith(name + ".") for other in graph)}
    edges = {name: {t for t in targets if t not in packages} for name, targets in graph.items() if name not in packages}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(groups)


def check_import_cycles(root: Path = ROOT) -> list[str]:
    """A line per circle inside a package under ``root/packages/*/src``; empty when there is none."""
    problems = []
    for src in sorted(root.glob("packages/*/src")):
        for group in cycles(package_graph(src)):
            problems.append(f"{src.parent.name}: {' <-> '.join(group)}")
    return problems


if __name__ == "__main__":
    found = check_import_cycles()
    print("\n".join(found) or "no import circles inside any package")
    sys.exit(1 if found else 0)
