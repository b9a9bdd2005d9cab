"""What each request leaves behind: one access line and the HTTP metrics, and ``/metrics``.

The outermost middleware makes the request's :class:`~stackd.observe.Observation`, so every
log line made while the request is served carries its id, and when the answer is done (a
stream's last byte included) counts it and writes its line. Requests aiohttp's parser refused
never reach the app: the runner logs those (stackd.server.runner).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from stackd import metrics
from stackd.logs import access_sink
from stackd.observe import Observation, current
from stackd.server.http import request_id
from stackd.server.keys import CALLER, CLIENT_ADDRESSES, STREAMS
from stackd.server.route_docs import outside_api

__all__ = ["access_middleware", "metrics_handler", "sample", "sample_every_second"]

log = logging.getLogger("stackd.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A method outside these (aiohttp routes any token) is counted as "other": labels stay bounded.
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED = "unmatched"


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def access_middleware(*, log_lines: bool, count: bool = True,
                      ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The middleware. ``count=False`` (``server.metrics.enabled: false``) records no metrics,
    ``log_lines=False`` writes no access line; the request's observation (its id on every log
    line) stays either way."""
    # Read per request: the level can change at run time (a test, an operator's debugger).
    wants_line = log.isEnabledFor

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        obs = Observation(request_id(request))
        token = current.set(obs)
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away and aiohttp cancelled the handler (nginx's code)
            raise
        except web.HTTPException as exc:  # the error middleware passes on only redirects
            status = exc.status
            raise
        finally:
            elapsed = time.perf_counter() - obs.started
            route = _route(request)
            if count:
                method = request.method if request.method in _METHODS else metrics.OTHER
                metrics.http_requests(route, method, str(status)).inc()
                metrics.http_duration(route, method).observe(elapsed)
                _model_metrics(obs)
            if log_lines and wants_line(logging.INFO):
                _line(request, obs, route, status, response, elapsed)
            current.reset(token)

    return middleware


def _model_metrics(obs: Observation) -> None:
    if obs.model is None:
        return
    model = metrics.model_label(obs.model)
    if obs.first_token is not None:
        metrics.ttft(model).observe(obs.first_token)
    if obs.tokens_in:
        metrics.tokens(model, "in").inc(obs.tokens_in)
    if obs.tokens_out:
        metrics.tokens(model, "out").inc(obs.tokens_out)


def _line(request: web.Request, obs: Observation, route: str, status: int, response: web.StreamResponse | None,
          elapsed: float) -> None:
    if response is None:
        size = 0
    elif response.prepared:  # a stream, written already
        size = response.body_length
    else:
        size = response.content_length or 0
    caller = request.get(CALLER)
    fields = {
        "method": request.method,
        "route": route,
        "status": status,
        "bytes": size,
        "duration_ms": _ms(elapsed),
        "upstream_ms": _ms(obs.upstream) if obs.upstream else None,
        "ttft_ms": _ms(obs.first_token),
        "model": obs.model,
        "tokens_in": obs.tokens_in,
        "tokens_out": obs.tokens_out,
        "principal": obs.principal,
        # Behind a trusted proxy, the client it names (server.trusted_proxies), as quotas count it.
        # Admission found it already; a request refused before (or without) admission is looked up here.
        "client": caller.client_address if caller is not None
        else request.app[CLIENT_ADDRESSES].client(request.remote, request.headers),
    }
    sink = access_sink()
    if sink is not None:
        sink(obs.request_id, f"{request.method} {route} {status}", fields)
    else:
        log.info("%s %s %d", request.method, route, status, extra={"request_id": obs.request_id, "fields": fields})


def sample(app: web.Application) -> None:
    """Set the in-flight gauges from what the drain middleware keeps anyway (the handler tasks
    running, and those among them streaming): nothing is counted per request for them."""
    live = app[STREAMS]
    metrics.IN_FLIGHT.set(len(live.requests))
    metrics.STREAMS.set(len(live.tasks))


async def sample_every_second(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` in multiprocess mode: the scrape may be answered by another process, which
    reads this one's gauges from its file, so they are kept fresh (one timer a second)."""
    if not metrics.multiprocess():
        yield
        return

    async def run() -> None:
        while True:
            sample(app)
            await asyncio.sleep(1.0)

    task = asyncio.create_task(run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@outside_api("Prometheus' text format at server.metrics.path, for scrapers (docs/operations.md)")
async def metrics_handler(request: web.Request) -> web.Response:
    """``GET /metrics`` (``server.metrics.path``): every stackd metric, in Prometheus text format."""
    sample(request.app)
    # Rendering is synchronous (a few hundred series: well under a millisecond; in multiprocess
    # mode a read of small mmapped files).
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})
