"""Import cycles among the modules of the given packages, counting every import the code can run.

Function-local imports are edges too (imports under `if TYPE_CHECKING:` are not: they never run), and importing a
submodule is an edge to each of its parent packages (their `__init__` runs first) unless the importer sits inside
that package.
Prints each cycle (a strongly connected component, with its edges) and exits 1 if there is any.

    python scripts/import_cycles.py rlcm cluster learner rollout rewards_service [--root .]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def find_modules(root: Path, packages: list[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages (a package is named by its `__init__`)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return isinstance(node, ast.If) and (
        (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
        or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
    )


def _runnable_nodes(tree: ast.AST):
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` blocks (their `else:` runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name the file imports where it can run; `from a import b` gives both `a.b` and `a`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in _runnable_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of `modules` that importing it runs (submodules, their parent packages)."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph = {}
    for name, path in modules.items():
        targets = {t for t in map(resolve, imported_names(name, path)) if t}
        for target in list(targets):
            parts = target.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent in modules and name != parent and not name.startswith(parent + "."):
                    targets.add(parent)
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="+", help="top-level package folders, e.g. rollout rewards_service")
    parser.add_argument("--root", type=Path, default=Path("."), help="the folder holding the packages")
    args = parser.parse_args()
    modules = find_modules(args.root, args.packages)
    graph = import_graph(modules)
    found = cycles(graph)
    for component in found:
        print(f"[{len(component)}] " + ", ".join(component))
        for module in component:
            print(f"    {module} -> " + ", ".join(sorted(graph[module] & set(component))))
    print(f"{len(found)} import cycle(s) among {len(modules)} modules of {', '.join(args.packages)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
