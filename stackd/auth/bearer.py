"""What every authenticator shares: the bearer token of a request, token hashes, a bounded
cache of decisions and one shared call per token.

A token never leaves this package except as a hash: caches, logs and messages see the hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, Protocol, TypeVar

import attrs

from stackd import metrics
from stackd.caller import Caller
from stackd.errors import Unauthorized

__all__ = ["AuthRequest", "DecisionCache", "Refusal", "RemoteDecisions", "SingleFlight", "bearer_token", "keyed_hash",
           "token_hash"]

T = TypeVar("T")

class AuthRequest(Protocol):
    """What an authenticator reads of a request (``stackd.admission.RequestInfo`` has it)."""

    @property
    def path(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def query(self) -> Mapping[str, list[str]]: ...
    @property
    def client_address(self) -> str | None: ...


# Far beyond any real JWT or API key, far below what would cost noticeable CPU to hash.
MAX_TOKEN_CHARS = 16 * 1024


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of ``Authorization: Bearer <token>``, or 401 (the message never quotes it)."""
    value = headers.get("Authorization")
    if value is None:
        raise Unauthorized("Authentication required: send Authorization: Bearer <token>", reason="missing")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("Authorization must use the Bearer scheme: Authorization: Bearer <token>",
                           reason="malformed")
    token = token.strip()
    if not token:
        raise Unauthorized("Authorization: Bearer carries no token", reason="malformed")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized(f"invalid token: longer than {MAX_TOKEN_CHARS} characters", reason="malformed")
    return token


def token_hash(token: str) -> bytes:
    """The cache key of a token: raw tokens are never kept in memory longer than a request."""
    return hashlib.sha256(token.encode()).digest()


def keyed_hash(key: bytes, token: str) -> str:
    """A token as it may be stored (an owner's namespace): HMAC, so a short token cannot be
    found again by hashing guesses without the key."""
    return "token:" + hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]


@attrs.define
class DecisionCache(Generic[T]):
    """Decisions by token hash, each until its own deadline; bounded, oldest dropped first."""

    max_entries: int
    name: str = "auth"
    """The ``cache`` label of stackd_auth_cache_lookups_total."""
    _entries: dict[bytes, tuple[float, T]] = attrs.field(factory=dict)

    def get(self, key: bytes) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            metrics.auth_cache(self.name, hit=False)
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            metrics.auth_cache(self.name, hit=False)
            return None
        metrics.auth_cache(self.name, hit=True)
        return entry[1]

    def put(self, key: bytes, value: T, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._evict()
        self._entries[key] = (time.monotonic() + ttl, value)

    def clear(self) -> None:
        self._entries.clear()

    def _evict(self) -> None:
        now = time.monotonic()
        for key in [k for k, (deadline, _) in self._entries.items() if deadline <= now]:
            del self._entries[key]
        # Still full: drop the oldest tenth (dicts keep insertion order) rather than one per put.
        if len(self._entries) >= self.max_entries:
            for key in list(self._entries)[: max(1, self.max_entries // 10)]:
                del self._entries[key]


@attrs.define
class SingleFlight(Generic[T]):
    """Concurrent askers of one key share one call: a burst of requests with one token makes
    one call to the identity provider. The call runs as its own task, so one asker that gives
    up (its client went away) does not cancel it for the others."""

    _calls: dict[bytes, asyncio.Task[T]] = attrs.field(factory=dict)

    async def run(self, key: bytes, call: Callable[[], Awaitable[T]]) -> T:
        task = self._calls.get(key)
        if task is None:
            task = asyncio.ensure_future(call())
            self._calls[key] = task
            task.add_done_callback(lambda _: self._calls.pop(key, None))
        return await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._calls.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._calls.clear()


@attrs.frozen
class Refusal:
    """An identity provider's "no" to a token, remembered for a while: 401 with ``message``."""

    message: str


Decision = Caller | Refusal
# Asks the identity provider about a token: its decision, and for how many seconds to keep it.
Decide = Callable[[str], Awaitable[tuple[Decision, float]]]


@attrs.define
class RemoteDecisions:
    """Decisions an endpoint makes about bearer tokens (custom auth, RFC 7662 introspection):
    kept by token hash until each one's deadline, and asked for once per token at a time."""

    cache: DecisionCache[Decision]
    _flight: SingleFlight[Decision] = attrs.field(factory=SingleFlight)

    async def caller(self, request: AuthRequest, decide: Decide) -> Caller:
        """The request's caller, from the cache or ``decide``; 401 for a refused token."""
        token = bearer_token(request.headers)
        key = token_hash(token)
        decision = self.cache.get(key)
        if decision is None:
            decision = await self._flight.run(key, lambda: self._fetch(key, token, decide))
        if isinstance(decision, Refusal):
            raise Unauthorized(decision.message)
        if decision.client_address != request.client_address:
            # Most requests of one token come from one address: no copy for those.
            decision = attrs.evolve(decision, client_address=request.client_address)
        return decision

    async def _fetch(self, key: bytes, token: str, decide: Decide) -> Decision:
        decision, ttl = await decide(token)
        self.cache.put(key, decision, ttl)
        return decision

    async def close(self) -> None:
        await self._flight.close()
        self.cache.clear()
