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

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Protocol

import attrs

from stackd import metrics
from stackd.caller import Caller
from stackd.config.schema import RoutePolicyRule
from stackd.errors import Forbidden, QuotaExceeded, StackdError, Unauthorized
from stackd.observe import current

__all__ = ["Admission", "Authenticator", "Gatekeeper", "QuotaCounter", "RequestInfo", "PUBLIC_PATHS", "principal_id"]

PUBLIC_PATHS = frozenset({"/v1/health", "/v1/health/live", "/v1/health/ready", "/v1/version"})

audit = logging.getLogger("stackd.audit")


def principal_id(key: bytes, principal: str) -> str:
    """How a principal appears in logs: a keyed hash, the same across restarts (the key is kept
    in the metadata store), that cannot be turned back into the name by hashing guesses."""
    return hmac.new(key, principal.encode(), hashlib.sha256).hexdigest()[:16]


def _failure_reason(exc: StackdError) -> str:
    """A bounded label for a refused authentication (set where it was refused, never from its message)."""
    if not isinstance(exc, Unauthorized):
        return "unavailable"  # the identity provider could not be asked: 503
    return exc.reason  # metrics.auth_failure counts a reason outside AUTH_REASONS as "other"


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
    hash_key: bytes = b""
    """Keys :func:`principal_id` (the stack's token hash key)."""

    def admits_everyone(self) -> bool:
        """No authentication, quota or route policy: every caller is let in as it is, so the
        server can skip building a :class:`RequestInfo` for the gate."""
        return self.authenticator is None and self.quota is None and not self.route_policy

    async def admit(self, request: RequestInfo) -> Admission:
        if request.path in self.public_paths:
            return Admission(Caller(client_address=request.client_address))
        if self.authenticator is not None:
            try:
                caller = await self.authenticator.authenticate(request)
            except StackdError as exc:
                reason = _failure_reason(exc)
                metrics.auth_failure(reason)
                self._audit("refused", reason, None)
                raise
        else:
            caller = Caller(client_address=request.client_address)
        who = principal_id(self.hash_key, caller.principal) if caller.principal is not None else None
        obs = current.get()
        if obs is not None:
            obs.principal = who
        headers: Mapping[str, str] = {}
        if self.quota is not None:
            try:
                headers = await self.quota.count(caller)
            except QuotaExceeded:
                metrics.quota_decision("rejected")
                raise
            except StackdError:
                metrics.quota_decision("unavailable")
                raise
            metrics.quota_decision("admitted")
        rule = "authenticated" if self.authenticator is not None else "no_auth"
        if self.route_policy:
            try:
                rule = self._check_route(request.path, caller)
            except Forbidden as exc:
                exc.headers.update(headers)  # a counted request: its 403 carries the counts too
                self._audit("forbidden", "route_policy: no rule grants it", who)
                raise
        if self.authenticator is not None:
            self._audit("allowed", rule, who)
        return Admission(caller, headers)

    @staticmethod
    def _audit(decision: str, rule: str, who: str | None) -> None:
        # The request id comes from the log filter; a principal only as its keyed hash.
        audit.info("auth %s: %s", decision, rule,
                   extra={"fields": {"decision": decision, "rule": rule, "principal": who}})

    def _check_route(self, path: str, caller: Caller) -> str:
        """The rule that allows ``path`` (``route_policy[i]``), or Forbidden."""
        for index, rule in enumerate(self.route_policy):
            if any(path == route or (route.endswith("/") and path.startswith(route)) for route in rule.routes):
                for category, allowed in rule.allow.items():
                    if set(allowed) & set(caller.attributes.get(category, ())):
                        return f"route_policy[{index}]"
                if not rule.allow:
                    return f"route_policy[{index}]"
                break
        raise Forbidden(f"not allowed to call {path}: no rule of server.route_policy grants it to this caller")
