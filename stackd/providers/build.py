"""Building providers in dependency order, checking each against its API, closing them in reverse.

A factory's object is compared with the protocol of its API when it is built, as pluggy checks
a hook implementation when it registers it: a misspelt or non-async method stops the start
with a message naming the distribution, the provider type and the method, instead of a 501
on the first request that needs it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Mapping
from typing import Any

from stackd.apis.known import COMMON_METHODS, PROVIDER_APIS
from stackd.providers.resolve import ResolvedProvider, build_order
from stackd.upstream import DEFAULT_LIMITS, UpstreamLimits

__all__ = ["ProviderContractError", "build_providers", "check_provider"]

log = logging.getLogger("stackd.providers")


class ProviderContractError(Exception):
    """A provider object does not implement its API's protocol."""


def _protocol_methods(protocol: type) -> list[str]:
    return [name for name, value in vars(protocol).items() if not name.startswith("_") and callable(value)]


def check_provider(p: ResolvedProvider, impl: Any) -> None:
    """Raise :class:`ProviderContractError` listing every method of ``p``'s API that ``impl``
    lacks, or defines with the wrong kind (``async def`` where the core awaits it)."""
    api = PROVIDER_APIS.get(p.api)
    problems: list[str] = []
    required = _protocol_methods(api.protocol) if api is not None and api.protocol is not None else []
    for name in required:
        method = getattr(impl, name, None)
        if method is None:
            problems.append(f"{name}() is missing")
        elif not inspect.iscoroutinefunction(method):
            problems.append(f"{name}() must be 'async def'")
    optional: dict[str, bool] = dict(COMMON_METHODS)
    optional.update(dict.fromkeys(api.optional if api is not None else (), True))
    for name, is_async in optional.items():
        method = getattr(impl, name, None)
        if method is None:
            continue
        if not callable(method):
            problems.append(f"{name} must be a method")
        elif is_async != inspect.iscoroutinefunction(method):
            problems.append(f"{name}() must be {'async def' if is_async else 'a plain def (not async)'}")
    if problems:
        raise ProviderContractError(
            f"provider {p.provider_id!r} ({p.provider_type}, from {p.distribution}) does not implement the "
            f"{p.api} API: {'; '.join(problems)}. The plugin and this stackd disagree on the provider "
            f"contract: upgrade the plugin, or report it to its authors"
        )


async def build_providers(
    providers: Mapping[str, ResolvedProvider],
    routers: Mapping[str, Any],
    stack: contextlib.AsyncExitStack,
    upstream_limits: UpstreamLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Await every factory in order, check each object, and register its ``close()`` on ``stack``."""
    built: dict[str, Any] = {}
    for p in build_order(providers):
        deps: dict[str, Any] = {api: routers[api] for api in p.spec.requires}
        deps["__provider_id__"] = p.provider_id
        deps["__upstream_limits__"] = upstream_limits
        log.info("starting provider %s (%s)", p.provider_id, p.provider_type)
        impl = await p.spec.factory(p.config, deps)
        # Closed even when it fails its check: the factory may have opened sessions or processes.
        stack.push_async_callback(_close, p.provider_id, impl)
        check_provider(p, impl)
        built[p.provider_id] = impl
    return built


async def _close(provider_id: str, impl: Any) -> None:
    close = getattr(impl, "close", None)
    if close is None or not inspect.iscoroutinefunction(close):
        return
    try:
        await close()
    except Exception:
        log.exception("provider %r failed to close cleanly", provider_id)
    else:
        # Operators (and the shutdown tests) see that the provider released its resources.
        log.info("closed provider %s", provider_id)
