"""The module graph of the core: no import cycle, and each layer imports only the layers below it.

Read from the source with ``ast`` (imports inside functions count too: a lazy import hides a
cycle, it does not remove it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stackd

ROOT = Path(stackd.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base]).strip(".")
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("stackd"):
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for dep in sorted(graph[node]):
            # A package's __init__ importing its own submodules is how packages work, not a cycle.
            if dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                return [*trail[trail.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        trail.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    assert _cycle(_graph()) is None


@pytest.mark.parametrize(
    ("layer", "must_not_import"),
    [
        ("stackd.caller", ("stackd.",)),
        ("stackd.errors", ("stackd.",)),
        ("stackd.convert", ("stackd.config", "stackd.apis", "stackd.providers", "stackd.server")),
        ("stackd.config", ("stackd.providers", "stackd.server", "stackd.loading", "stackd.stack")),
        ("stackd.apis", ("stackd.config", "stackd.providers", "stackd.server", "stackd.registry", "stackd.routing")),
        ("stackd.providers", ("stackd.server", "stackd.stack", "stackd.loading")),
    ],
)
def test_layers_import_only_what_is_below_them(layer: str, must_not_import: tuple[str, ...]) -> None:
    graph = _graph()
    wrong = sorted(
        f"{module} imports {dep}"
        for module, deps in graph.items()
        if module == layer or module.startswith(layer + ".")
        for dep in deps
        if dep.startswith(must_not_import) and not (dep == layer or dep.startswith(layer + "."))
    )
    assert wrong == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
