"""Building providers in dependency order, and closing them in reverse."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from stackd.config.loader import ResolvedProvider

__all__ = ["DependencyError", "build_order", "build_providers"]

log = logging.getLogger("stackd.providers")


class DependencyError(Exception):
    """A provider needs an API nobody serves, or providers need each other in a cycle."""


def build_order(providers: Mapping[str, ResolvedProvider]) -> list[ResolvedProvider]:
    """Providers sorted so that every provider comes after those serving the APIs it requires."""
    by_api: dict[str, list[ResolvedProvider]] = {}
    for p in providers.values():
        by_api.setdefault(p.api, []).append(p)
    problems: list[str] = []
    for p in providers.values():
        for api in p.spec.requires:
            if api not in by_api:
                problems.append(
                    f"provider {p.provider_id!r} ({p.provider_type}) requires the {api!r} API; "
                    f"add a provider under providers.{api} and list {api!r} in apis"
                )
    if problems:
        raise DependencyError("; ".join(problems))

    order: list[ResolvedProvider] = []
    state: dict[str, str] = {}  # api -> "visiting" | "done"

    def visit(api: str, trail: list[str]) -> None:
        if state.get(api) == "done":
            return
        if state.get(api) == "visiting":
            cycle = " -> ".join([*trail[trail.index(api):], api])
            raise DependencyError(f"providers depend on each other in a cycle: {cycle}")
        state[api] = "visiting"
        for p in by_api[api]:
            for dep in p.spec.requires:
                visit(dep, [*trail, api])
        state[api] = "done"
        order.extend(by_api[api])

    for api in sorted(by_api):
        visit(api, [])
    return order


async def build_providers(
    providers: Mapping[str, ResolvedProvider],
    routers: Mapping[str, Any],
    stack: contextlib.AsyncExitStack,
) -> dict[str, Any]:
    """Await every factory in order; register each instance's ``close()`` on ``stack``."""
    built: dict[str, Any] = {}
    for p in build_order(providers):
        deps: dict[str, Any] = {api: routers[api] for api in p.spec.requires}
        deps["__provider_id__"] = p.provider_id
        log.info("starting provider %s (%s)", p.provider_id, p.provider_type)
        impl = await p.spec.factory(p.config, deps)
        built[p.provider_id] = impl
        stack.push_async_callback(_close, p.provider_id, impl)
    return built


async def _close(provider_id: str, impl: Any) -> None:
    close = getattr(impl, "close", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        log.exception("provider %r failed to close cleanly", provider_id)
    else:
        # Operators (and the shutdown tests) see that the provider released its resources.
        log.info("closed provider %s", provider_id)
