"""The aiohttp application: one cleanup_ctx for the stack, two middlewares, the routes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from stackd.admission import Gatekeeper, RequestInfo
from stackd.apis.known import PROVIDER_APIS
from stackd.caller import Caller
from stackd.errors import NotImplementedByProvider, UpstreamUnavailable
from stackd.kvstore import StoreClaim
from stackd.loading import LoadedConfig
from stackd.server import openapi, routes_meta, routes_moderations, routes_native, routes_openai, routes_resources
from stackd.server.access import access_middleware, metrics_handler, sample_every_second
from stackd.server.client_address import ClientAddresses
from stackd.server.errors import error_middleware, error_response, http_error, quiet_parser_errors
from stackd.server.hosts import allowed_hosts, host_middleware
from stackd.server.http import body_too_large, send_request_id
from stackd.server.keys import (
    BODY_TIMEOUT,
    CALLER,
    CLIENT_ADDRESSES,
    CONFIG,
    DISCARD_BODY,
    DRAINING,
    LIFECYCLE,
    MAX_BODY,
    MAX_JSON_DEPTH,
    RATE_HEADERS,
    STACK,
    STALL_TIMEOUT,
    STARTED_AT,
    STREAMS,
)
from stackd.server.live_streams import LiveStreams
from stackd.server.readiness import Lifecycle
from stackd.stack import open_stack

__all__ = ["create_app", "drain_middleware"]

log = logging.getLogger("stackd.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: a body over the limit is refused before the client sends it.

    aiohttp's default answers ``100 Continue`` to any size, so the client sends a body that
    is then refused; and it answers other expectations in text/plain.
    """
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        response = error_response(
            http_error(417, "expectation_failed", "unsupported Expect header; only '100-continue' is understood"))
        response.force_close()
        return response
    declared = request.content_length
    if declared is not None and declared > request.app[MAX_BODY]:
        request[DISCARD_BODY] = True
        response = error_response(body_too_large(request))
        response.force_close()
        return response
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not the response (aiohttp does the same)
    return None


def _add_routes(app: web.Application, table: web.RouteTableDef) -> None:
    for route in table:
        assert isinstance(route, web.RouteDef)
        web.RouteDef(route.method, route.path, route.handler,
                     {"expect_handler": _expect_continue, **route.kwargs}).register(app.router)


def _missing_api_middleware(missing: dict[str, str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        for api, why in missing.items():
            if any(path.startswith(prefix) for prefix in PROVIDER_APIS[api].prefixes):
                raise NotImplementedByProvider(f"the {api} API is not available in this server: {why}")
        return await handler(request)

    return middleware


_CUT_BY_SHUTDOWN = ("the server is shutting down and this request did not finish within server.shutdown_grace; "
                    "retry it")


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request is known while it runs, so a shutdown past its grace can answer it.

    A request still running at the end of ``server.shutdown_grace`` is cancelled
    (:meth:`LiveStreams.end_all`): a stream ends with its last frame (:mod:`stackd.server.sse`),
    anything else is answered here with 503 and ``Connection: close`` instead of a dropped
    connection. Any other cancellation (the client went away) goes on as before.
    """
    live = request.app[STREAMS]
    task = asyncio.current_task()
    assert task is not None
    live.requests.add(task)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if not live.ended_by_shutdown(task) or task.cancelling() > 1:
            raise
        task.uncancel()
        response = error_response(UpstreamUnavailable(_CUT_BY_SHUTDOWN))
        response.force_close()
        return response
    finally:
        live.requests.discard(task)


@web.middleware
async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    gate = request.app[STACK].gate
    if gate.admits_everyone():
        request[CALLER] = Caller(client_address=request.app[CLIENT_ADDRESSES].client(request.remote, request.headers))
        return await handler(request)
    admission = await gate.admit(
        RequestInfo(
            method=request.method,
            path=request.path,
            headers=request.headers,
            query={k: request.query.getall(k) for k in request.query},
            client_address=request.app[CLIENT_ADDRESSES].client(request.remote, request.headers),
        )
    )
    request[CALLER] = admission.caller
    if admission.headers:
        request[RATE_HEADERS] = admission.headers
    return await handler(request)


async def send_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every counted answer carries X-RateLimit-* (JSON, streams and
    the errors the error middleware builds alike); a middleware sees a stream only prepared."""
    headers = request.get(RATE_HEADERS)
    if headers:
        response.headers.update(headers)


def create_app(
    loaded: LoadedConfig, *, gate: Gatekeeper | None = None, listen_host: str | None = None,
    access_log: bool | None = None,
    claim: StoreClaim = StoreClaim(),  # noqa: B008 - frozen
) -> web.Application:
    """The application for ``loaded``. The stack opens when the app starts and closes when it stops.

    ``listen_host`` is the address served (``--host`` wins over ``server.host``): it decides
    which ``Host`` headers are answered when ``server.allowed_hosts`` is not set.
    ``access_log`` overrides ``server.access_log`` (``stackd serve --[no-]access-log``). ``claim``: a
    worker's share of the metadata store (:class:`stackd.kvstore.StoreClaim`).
    """
    quiet_parser_errors()
    server = loaded.run.server
    log_lines = server.access_log if access_log is None else access_log
    # The access middleware is outermost: it sees the answer the others made of any failure (the
    # drain's 503 included), and every line logged further in carries the request id.
    middlewares: list[Callable[..., Awaitable[web.StreamResponse]]] = [
        access_middleware(log_lines=log_lines, count=server.metrics.enabled), drain_middleware, error_middleware]
    hosts = allowed_hosts(loaded.run.server.allowed_hosts, listen_host or loaded.run.server.host)
    if hosts is not None:
        middlewares.append(host_middleware(hosts))
    if loaded.missing_apis:
        middlewares.append(_missing_api_middleware(loaded.missing_apis))
    middlewares.append(admission_middleware)
    app = web.Application(middlewares=middlewares, client_max_size=loaded.run.server.max_body_bytes)
    app[CONFIG] = loaded
    app[STARTED_AT] = time.time()
    app[MAX_BODY] = loaded.run.server.max_body_bytes
    app[MAX_JSON_DEPTH] = loaded.run.server.max_json_depth
    app[STALL_TIMEOUT] = float(loaded.run.server.stream_stall_timeout)
    app[BODY_TIMEOUT] = float(loaded.run.server.body_timeout)
    app[STREAMS] = LiveStreams()
    app[DRAINING] = asyncio.Event()
    app[CLIENT_ADDRESSES] = ClientAddresses.of(loaded.run.server.trusted_proxies)
    app[LIFECYCLE] = Lifecycle()

    async def stack_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_stack(loaded, gate=gate, claim=claim) as stack:
            app[STACK] = stack
            yield

    app.cleanup_ctx.append(stack_ctx)
    app.on_startup.append(openapi.build_on_startup)
    if server.metrics.enabled:
        app.cleanup_ctx.append(sample_every_second)
    app.on_response_prepare.append(send_request_id)
    app.on_response_prepare.append(send_rate_headers)
    for table in (routes_meta.routes, routes_resources.routes, routes_openai.routes, routes_native.routes,
                  routes_moderations.routes):
        _add_routes(app, table)
    app.router.add_get("/v1/openapi.json", openapi.openapi_json)
    if server.metrics.enabled:
        app.router.add_get(server.metrics.path, metrics_handler)
    return app
