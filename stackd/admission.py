"""Admission: every call passes the :class:`Gatekeeper` before a handler runs.

1. authenticate  -> a :class:`Caller` (or 401; health and version stay public)
2. quota         -> counted against the authenticated identity (or 429); a 401 costs nothing
3. authorize     -> route policy (403)

Routing is not the gate's: the handler calls an API module (:mod:`stackd.apis`), whose router
resolves ``model_id`` / ``shield_id`` through the registry, which also decides what the caller
may see (404) and change (403). Auth and quota are pluggable: anything with the
:class:`Authenticator` / :class:`QuotaCounter` shape fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import attrs

from stackd.caller import Caller
from stackd.config.schema import RoutePolicyRule
from stackd.errors import Forbidden

__all__ = ["Admission", "Authenticator", "Gatekeeper", "QuotaCounter", "RequestInfo", "PUBLIC_PATHS"]

PUBLIC_PATHS = frozenset({"/v1/health", "/v1/version"})


@attrs.frozen
class RequestInfo:
    method: str
    path: str
    headers: Mapping[str, str]
    query: Mapping[str, list[str]]
    client_address: str | None


@attrs.frozen
class Admission:
    caller: Caller
    headers: Mapping[str, str] = attrs.field(factory=dict)
    """Response headers to add (X-RateLimit-*)."""


class Authenticator(Protocol):
    async def authenticate(self, request: RequestInfo) -> Caller:
        """The caller of ``request``; raise Unauthorized (401) or UpstreamUnavailable (503)."""
        ...

    async def close(self) -> None: ...


class QuotaCounter(Protocol):
    async def count(self, caller: Caller) -> Mapping[str, str]:
        """Count one request; return rate-limit headers, or raise QuotaExceeded (429) /
        UpstreamUnavailable (503, the store failed: fail closed)."""
        ...

    async def close(self) -> None: ...


@attrs.define
class Gatekeeper:
    authenticator: Authenticator | None = None
    quota: QuotaCounter | None = None
    route_policy: list[RoutePolicyRule] = attrs.field(factory=list)
    public_paths: frozenset[str] = PUBLIC_PATHS
    """Served without authentication: health and version always, plus ``server.auth.public_paths``."""

    def admits_everyone(self) -> bool:
        """No authentication, quota or route policy: every caller is let in as it is, so the
        server can skip building a :class:`RequestInfo` for the gate."""
        return self.authenticator is None and self.quota is None and not self.route_policy

    async def admit(self, request: RequestInfo) -> Admission:
        if request.path in self.public_paths:
            return Admission(Caller(client_address=request.client_address))
        if self.authenticator is not None:
            caller = await self.authenticator.authenticate(request)
        else:
            caller = Caller(client_address=request.client_address)
        headers: Mapping[str, str] = {}
        if self.quota is not None:
            headers = await self.quota.count(caller)
        if self.route_policy:
            try:
                self._check_route(request.path, caller)
            except Forbidden as exc:
                exc.headers.update(headers)  # a counted request: its 403 carries the counts too
                raise
        return Admission(caller, headers)

    def _check_route(self, path: str, caller: Caller) -> None:
        for rule in self.route_policy:
            if any(path == route or (route.endswith("/") and path.startswith(route)) for route in rule.routes):
                for category, allowed in rule.allow.items():
                    if set(allowed) & set(caller.attributes.get(category, ())):
                        return
                if not rule.allow:
                    return
                break
        raise Forbidden(f"not allowed to call {path}: no rule of server.route_policy grants it to this caller")
