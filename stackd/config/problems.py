"""Config problems: every one is collected with where it is, and reported at once.

``message @ $.path (file:line:col)``: the path comes from the checks, the position from
ruamel.yaml's nodes. The config checks and the plugin-config checks write to one
:class:`Report`, so a user sees every problem of a file in one run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from stackd.errors import FieldError

__all__ = ["ConfigError", "Locator", "Problem", "Report"]


@attrs.frozen
class Problem:
    path: str
    message: str
    location: str | None = None

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"{self.message} @ {self.path}{where}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(str(p) for p in problems))


class Locator:
    """Maps ``$.a.b[0]`` paths to ``file:line:col`` using ruamel's node positions."""

    def __init__(self, tree: Any, filename: str) -> None:
        self.filename = filename
        self.positions: dict[str, tuple[int, int]] = {}
        self._index(tree, "$")

    def _index(self, node: Any, path: str) -> None:
        if isinstance(node, CommentedMap):
            for key in node:
                try:
                    line, col = node.lc.value(key)
                except (KeyError, TypeError, AttributeError):
                    continue
                try:
                    kline, kcol = node.lc.key(key)
                except (KeyError, TypeError, AttributeError):
                    kline, kcol = line, col
                child = f"{path}.{key}"
                self.positions[child] = (line, col)
                self.positions[child + "#key"] = (kline, kcol)
                self._index(node[key], child)
        elif isinstance(node, CommentedSeq):
            for i, item in enumerate(node):
                try:
                    line, col = node.lc.item(i)
                except (KeyError, TypeError, AttributeError, IndexError):
                    continue
                child = f"{path}[{i}]"
                self.positions[child] = (line, col)
                self._index(item, child)

    def locate(self, path: str, *, key: bool = False) -> str | None:
        probe = path
        while probe:
            pos = self.positions.get(probe + "#key") if key else None
            pos = pos or self.positions.get(probe)
            if pos is not None:
                return f"{self.filename}:{pos[0] + 1}:{pos[1] + 1}"
            cut = max(probe.rfind("."), probe.rfind("["))
            if cut <= 0:
                break
            probe = probe[:cut]
        return None


class Report:
    """The problems and warnings of one config file, each located in it."""

    def __init__(self, locator: Locator) -> None:
        self.locator = locator
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message, self.locator.locate(path)))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message, self.locator.locate(path, key=True)))

    def field_errors(self, errors: Iterable[FieldError]) -> None:
        for err in errors:
            self.error(err.loc, err.msg)

    def raise_if_problems(self) -> None:
        if self.problems:
            raise ConfigError(self.problems, self.warnings)
