"""``${env.X}`` substitution over a loaded config tree, before any validation.

| form               | X set | X unset or empty            |
|--------------------|-------|-----------------------------|
| ``${env.X}``       | value | error naming X and the path |
| ``${env.X:=d}``    | value | d (may be empty)            |
| ``${env.X:+alt}``  | alt   | empty                       |
| ``${env.X:d}``     | value | d (the Llama Stack 0.2.12 form) |

A string that is exactly one substitution is converted: true/false to bool, integers, floats,
and empty to null (so ``provider_id: ${env.ENABLE_X:+x}`` can disable a provider).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from stackd.errors import FieldError

__all__ = ["substitute"]

_REF = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(?:(:=|:\+|:)([^}]*))?\}")


def _convert(text: str) -> Any:
    if text == "":
        return None
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _replace_all(text: str, env: Mapping[str, str], path: str, errors: list[FieldError]) -> Any:
    whole = _REF.fullmatch(text)

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name) or ""
        if op == ":+":
            return arg if value else ""
        if value:
            return value
        if op in (":=", ":"):
            return arg
        errors.append(
            FieldError(path, f"environment variable {name} is not set (set it, or write ${{env.{name}:=default}})")
        )
        return ""

    replaced = _REF.sub(one, text)
    if whole is not None:
        return _convert(replaced)
    return replaced


def substitute(data: Any, env: Mapping[str, str], path: str = "$") -> tuple[Any, list[FieldError]]:
    """A copy of ``data`` with every reference replaced, and the problems met."""
    errors: list[FieldError] = []
    return _walk(data, env, path, errors), errors


def _walk(data: Any, env: Mapping[str, str], path: str, errors: list[FieldError]) -> Any:
    if isinstance(data, str):
        return _replace_all(data, env, path, errors) if "${" in data else data
    if isinstance(data, Mapping):
        return {key: _walk(value, env, f"{path}.{key}", errors) for key, value in data.items()}
    if isinstance(data, list):
        return [_walk(item, env, f"{path}[{i}]", errors) for i, item in enumerate(data)]
    return data
