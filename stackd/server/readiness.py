"""Readiness: every dependency pinged, at most once per :data:`CACHE_SECONDS` however often probed.

What is checked (docs/operations.md, "Health"): the metadata store (a read), the quota store
(a read that counts nothing), the inference store (a read of an id that does not exist), each
provider's readiness and ``health()``, and the authenticator's ``health()`` (the JWKS's last
fetch). Each check has :data:`CHECK_TIMEOUT`; they run concurrently. Concurrent probes share
one run, and its result is kept for :data:`CACHE_SECONDS`: a probe storm costs the
dependencies one round of checks per period. ``/v1/providers`` shows the same provider results.

When the server is shutting down, readiness fails at once, without checking anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from stackd.errors import NotFound, StackdError

if TYPE_CHECKING:
    from stackd.stack import Stack

__all__ = ["CACHE_SECONDS", "CHECK_TIMEOUT", "Lifecycle", "Report", "health_of"]

log = logging.getLogger("stackd.readiness")

CACHE_SECONDS = 1.5
CHECK_TIMEOUT = 2.0
_OK = {"status": "OK"}
_PROBE_ID = "readiness-probe"


async def _timed(check: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    try:
        result = await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT)
    except TimeoutError:
        return {"status": "Error", "message": f"no answer within {CHECK_TIMEOUT:g} s"}
    except StackdError as exc:
        return {"status": "Error", "message": exc.message}
    except Exception as exc:  # noqa: BLE001 - a failing dependency is a health status, not a 500
        return {"status": "Error", "message": f"{type(exc).__name__}: {exc}"}
    return dict(result) if isinstance(result, dict) else dict(_OK)


async def health_of(impl: Any) -> dict[str, Any]:
    """A provider's ``health()`` (``{"status": "OK" | "Error" | "Not Implemented", ...}``), bounded in time."""
    check = getattr(impl, "health", None)
    if check is None:
        return {"status": "Not Implemented", "message": "the provider has no health check"}
    return await _timed(check)


async def _absent_completion(stack: Stack) -> None:
    store = stack.inference_store
    assert store is not None
    try:
        # The store itself, not its writer: reads through the writer wait for queued writes.
        await store.store_backend.get(_PROBE_ID)
    except NotFound:
        return


@attrs.frozen
class Report:
    ready: bool
    checks: dict[str, dict[str, Any]]
    checked_at: float  # time.time()


@attrs.define
class Lifecycle:
    """The last readiness run, shared by the probes while it is fresh (draining is
    ``app[DRAINING]``, set by the runner at the first signal)."""

    _report: Report | None = None
    _expires: float = 0.0
    _running: asyncio.Task[Report] | None = None

    async def readiness(self, stack: Stack) -> Report:
        if self._report is not None and time.monotonic() < self._expires:
            return self._report
        if self._running is None:
            self._running = asyncio.ensure_future(self._check(stack))
            self._running.add_done_callback(self._ran)
        # Shielded: a probe that gives up does not cancel the run the others wait for.
        return await asyncio.shield(self._running)

    def _ran(self, task: asyncio.Task[Report]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            report = task.result()
            _log_changes(self._report, report)
            self._report = report
            self._expires = time.monotonic() + CACHE_SECONDS

    async def _check(self, stack: Stack) -> Report:
        checks: dict[str, Awaitable[dict[str, Any]]] = {
            "metadata_store": _timed(lambda: stack.metadata.get(_PROBE_ID)),
        }
        quota = stack.gate.quota
        ping = getattr(quota, "ping", None)
        if ping is not None:
            checks["quota_store"] = _timed(ping)
        if stack.inference_store is not None:
            checks["inference_store"] = _timed(lambda: _absent_completion(stack))
        auth_health = getattr(stack.gate.authenticator, "health", None)
        if auth_health is not None:
            checks["auth"] = _timed(_as_async(auth_health))
        ready = stack.ready()
        for pid, impl in stack.providers.items():
            checks[f"provider:{pid}"] = _provider(impl, ready.get(pid, True))
        results = await asyncio.gather(*checks.values())
        by_name = dict(zip(checks, results, strict=True))
        ok = all(r.get("status") in ("OK", "Not Implemented") for r in results)
        return Report(ok, by_name, time.time())


def _log_changes(before: Report | None, now: Report) -> None:
    """A check that fails (or fails differently) is logged once with its reason, and once when it recovers:
    the public readiness answer names failed checks only, so the reasons are here."""
    old = before.checks if before is not None else {}
    for name, result in now.checks.items():
        was = old.get(name)
        if result.get("status") == "Error":
            if was is None or was.get("status") != "Error" or was.get("message") != result.get("message"):
                log.warning("readiness: %s failed: %s", name, result.get("message", "no reason given"))
        elif was is not None and was.get("status") == "Error":
            log.info("readiness: %s recovered", name)


def _as_async(call: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        result = call()
        return await result if asyncio.iscoroutine(result) else result

    return run


async def _provider(impl: Any, is_ready: bool) -> dict[str, Any]:
    health = await health_of(impl)
    if not is_ready:
        from stackd.routing import not_ready_reason

        reason = not_ready_reason(impl)
        # The provider's own details stay (a llama.cpp model's last exit, say): /v1/providers shows them.
        return {**health, "status": "Error",
                "message": f"not ready: {reason}" if reason else "not ready: still loading"}
    return health
