"""The database drivers that are extras: which module each store type needs, and the one
message that names the extra to install when it is missing."""

from __future__ import annotations

import importlib.util

from stackd import DISTRIBUTION
from stackd.errors import UpstreamUnavailable

__all__ = ["missing_driver", "require_driver"]

# store type -> (module, extra)
_DRIVERS = {"postgres": ("asyncpg", "postgres"), "redis": ("redis", "redis")}


def missing_driver(store_type: str, section: str) -> str | None:
    """Why ``section`` (a config path) cannot use ``store_type`` here, or None when it can."""
    if store_type not in _DRIVERS:
        return None
    module, extra = _DRIVERS[store_type]
    if importlib.util.find_spec(module) is not None:
        return None
    return (f"{section} type {store_type!r} needs the {module} driver, which is not installed: "
            f"pip install '{DISTRIBUTION}[{extra}]'")


def require_driver(store_type: str, section: str) -> None:
    problem = missing_driver(store_type, section)
    if problem is not None:
        raise UpstreamUnavailable(problem)
