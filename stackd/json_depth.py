"""How deep a JSON value nests, checked cheaply where JSON comes in.

orjson parses up to 1,024 levels of nesting but writes only 255: a value accepted deeper than
that can never be answered again (a model's ``metadata`` broke ``GET /v1/models`` for everyone,
across restarts). Every JSON that stackd reads from outside (request bodies, provider data,
upstream answers, stored records) is held to a depth well under 255, so that what is accepted,
wrapped in the few levels a list or a store adds, still serialises.

The check walks containers only (strings and numbers are never looked at twice), level by
level, so it costs a fraction of the parse it follows.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ANSWER_MAX_DEPTH", "ORJSON_MAX_DEPTH", "STORED_MAX_DEPTH", "deeper_than", "may_nest_deeper"]

ORJSON_MAX_DEPTH = 255
"""The deepest nesting orjson can write."""

ANSWER_MAX_DEPTH = 128
"""The deepest upstream answer stackd passes on: a stored completion wrapped in a list page
(three more levels) or a native answer built around it still serialises."""

STORED_MAX_DEPTH = ORJSON_MAX_DEPTH - 5
"""The deepest stored record a list or get serves: its answer wraps it in at most five levels."""

# The path of a too-deep value names this many steps, then "…": enough to find the field.
_PATH_LEVELS = 6


def may_nest_deeper(raw: bytes, limit: int) -> bool:
    """Whether the JSON text ``raw`` could nest deeper than ``limit``: N levels need 2N bytes and
    N opening brackets. Two C-speed tests (well under a microsecond) that spare nearly every body
    and stream event the walk of :func:`deeper_than`."""
    return len(raw) > 2 * limit and raw.count(b"{") + raw.count(b"[") > limit


def deeper_than(data: Any, limit: int) -> str | None:
    """The ``$.path`` of a container nested deeper than ``limit`` levels in ``data``, or None.

    The top-level object or array is level 1.
    """
    # The walk that runs on every body carries no paths (building them cost more than the
    # walk); only a body that fails is walked again to say where.
    return _path_of(data, limit) if _exceeds(data, limit) else None


def _exceeds(data: Any, limit: int) -> bool:
    # Level by level, one comprehension per level: measured fastest in CPython (about 5 µs for
    # a 30-message chat body, half of what orjson takes to parse it; under 1 µs for a small one).
    level: list[Any] = [data] if type(data) is dict or type(data) is list else []
    depth = 1
    while level:
        if depth > limit:
            return True
        level = [c for n in level for c in (n.values() if type(n) is dict else n)
                 if type(c) is dict or type(c) is list]
        depth += 1
    return False


def _path_of(data: Any, limit: int) -> str:
    """Where ``data`` first nests deeper than ``limit``: up to six steps of the path, then "…"."""
    loc, node, depth, steps = "$", data, 1, 0
    while depth <= limit:
        items = node.items() if type(node) is dict else enumerate(node)
        for key, child in items:  # noqa: B007 - key names the step taken, after the loop
            if (type(child) is dict or type(child) is list) and _exceeds(child, limit - depth):
                break
        else:  # pragma: no cover - deeper_than found a too-deep container below this one
            return loc
        steps += 1
        if steps > _PATH_LEVELS:
            return loc + "…"
        loc += f".{key}" if type(node) is dict else f"[{key}]"
        node, depth = child, depth + 1
    return loc
