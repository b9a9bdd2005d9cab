"""Serving the app: sockets bound before the app starts, aiohttp's connection handler with
stackd's limits, and a shutdown that ends in bounded time.

What aiohttp's own ``web.run_app`` leaves open, and this module closes:

- a client that sends part of its headers and then waits holds its connection for ever: the
  first request's headers get ``server.header_timeout`` (later ones ``server.keepalive_timeout``);
- the number of connections has no bound, so a flood of idle ones uses up the file descriptors
  and new clients get empty replies: over ``server.max_connections`` a new connection gets one
  503 and is closed, with a log line;
- requests its parser refuses are answered in text/plain quoting up to 100 bytes of the
  offending line (a token, say) and logged with a traceback: here they get the one JSON error
  shape with the right status, quote nothing, and log one INFO line;
- on SIGTERM, in-flight requests were waited for and then cancelled, each step with its own
  timeout (twice the shutdown timeout in all), and cut streams ended without an error frame:
  here requests get ``server.shutdown_grace``, then streams end with one error frame.

aiohttp creates its ``RequestHandler`` (the protocol of one connection) from a ``web.Server``;
neither has a hook for these, so the runner swaps in subclasses of both, and of ``SockSite``
(for the TLS handshake timeout). What they override (``connection_made``, ``data_received``,
``connection_lost``, ``handle_error``, ``finish_response``, ``Server.__call__``,
``SockSite.start``) and read (``_request_count``, ``_request_in_progress``, ``_force_close``,
``Server._kwargs``, the site's ``_sock``/``_ssl_context``/``_backlog``) is the same from aiohttp
3.10 to 3.14; pyproject pins 3.14 for other reasons. tests/test_http_server.py covers each.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import attrs
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from stackd.config.schema import ServerConfig
from stackd.errors import RequestTimeout, StackdError
from stackd.server.errors import error_response, http_error, parser_error
from stackd.server.keys import DISCARD_BODY, DRAINING, STREAMS

__all__ = ["Limits", "StackdRunner", "bind", "fd_limit", "serve"]

log = logging.getLogger("stackd.server")

# After a refused body (too large, too slow, undecodable) the rest of it is not worth reading
# (or inflating: a gzip bomb costs CPU for as long as it is read), but closing at once could
# reset the connection before the client read the answer. A short linger serves both.
_DISCARD_LINGER = 1.0
# What remains after the grace: streams write their last frame, then what is left is cut.
_END_STREAMS_WAIT = 1.0
_CANCEL_WAIT = 0.5
# How long a refused connection may take to read its 503 before it is closed.
_REFUSED_LINGER = 0.5
# One line per burst of refused connections, not one per connection.
_REFUSED_LOG_EVERY = 10.0


def fd_limit() -> int:
    """The process's soft limit on open files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@attrs.frozen
class Limits:
    """The connection-level limits of ``server:`` (docs/api.md, "Limits")."""

    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 512
    max_header_bytes: int = 8190
    shutdown_grace: float = 10.0

    @classmethod
    def from_config(cls, server: ServerConfig) -> Limits:
        # Half the descriptors for clients leaves the other half for upstream connections,
        # stores and logs: one proxied request holds one of each side.
        max_connections = server.max_connections or max(1, fd_limit() // 2)
        return cls(
            header_timeout=float(server.header_timeout),
            keepalive_timeout=float(server.keepalive_timeout),
            max_connections=max_connections,
            max_header_bytes=server.max_header_bytes,
            shutdown_grace=float(server.shutdown_grace),
        )


def _answer(status: int, err: StackdError) -> bytes:
    """A whole HTTP/1.1 response, written to a transport before any request was parsed."""
    body = orjson.dumps(err.body())
    reason = {408: "Request Timeout", 503: "Service Unavailable"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_BUSY = http_error(503, "service_unavailable",
                   "too many connections (server.max_connections); retry shortly")


class _Handler(RequestHandler):
    """One connection: counted against the limit, headers on a deadline, errors as JSON."""

    __slots__ = ("_header_timer", "_owner", "_refused")

    def __init__(self, owner: _Server, **kwargs: Any) -> None:
        super().__init__(owner, **kwargs)
        self._owner = owner
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self._owner
        if owner.open >= owner.limits.max_connections:
            self._refused = True
            owner.refuse(transport)
            return
        owner.open += 1
        super().connection_made(transport)
        self._header_timer = asyncio.get_running_loop().call_later(
            owner.limits.header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            # Read and dropped: closing with unread bytes would reset the connection, and the
            # client could lose the 503 before reading it.
            return
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._owner.open -= 1
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        # Only the first request is timed here: after an answer, aiohttp's keep-alive timer
        # closes a connection whose next request is not complete within keepalive_timeout.
        self._header_timer = None
        transport = self.transport
        if self._request_count or transport is None or transport.is_closing():
            return
        timeout = self._owner.limits.header_timeout
        log.info("closed a connection from %s: no complete request headers within %g s (server.header_timeout)",
                 _peer(transport), timeout)
        transport.write(_answer(408, RequestTimeout(
            f"the request headers did not arrive within {timeout:g} s (server.header_timeout)")))
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Every answer carries a request id (docs/api.md); the request's own, if any, was not parsed.
        rid = os.urandom(12).hex()
        if status == 500 and exc is not None and not _is_parser_error(exc):
            # An exception escaped the app (the error middleware answers everything else): a bug.
            log.error("internal error on %s %s (request %s)", request.method, request.path, rid, exc_info=exc)
            err = StackdError("internal server error; the server log has the details")
        else:
            err = parser_error(status, exc)
            client_side = err.status < 500 or (exc is not None and _is_parser_error(exc))  # 501: the client's coding
            log.log(logging.INFO if client_side else logging.WARNING,
                    "refused a request from %s: %s (HTTP %d, request %s)", request.remote, err.message, err.status, rid)
        if request.writer.output_size > 0:
            # Part of an answer went out already: nothing more can be said on this connection.
            raise ConnectionError("the response was already under way")
        response = error_response(err)
        response.headers["X-Request-ID"] = rid
        response.force_close()
        return response

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: Any
    ) -> tuple[web.StreamResponse, bool]:
        discard = request.get(DISCARD_BODY, False)
        if discard:
            resp.force_close()  # "Connection: close": the client knows not to send another request
        result = await super().finish_response(request, resp, start_time)
        transport = self.transport
        if discard and transport is not None:
            # With _force_close set, aiohttp neither lingers on the rest of the body nor parses
            # (inflates) what still arrives; the transport closes a moment later.
            self._force_close = True
            asyncio.get_running_loop().call_later(_DISCARD_LINGER, transport.close)
        return result

    @property
    def busy(self) -> bool:
        return bool(self._request_in_progress)


def _is_parser_error(exc: BaseException) -> bool:
    from aiohttp.http_exceptions import HttpProcessingError

    return isinstance(exc, HttpProcessingError)


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class _Server(web.Server):
    """aiohttp's server, making :class:`_Handler` connections and counting them."""

    limits: Limits
    open: int
    _refused_since: int
    _refused_logged_at: float

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.WriteTransport subclasses: no isinstance).
        stream = cast(asyncio.Transport, transport)
        stream.write(_answer(503, _BUSY))
        if stream.can_write_eof():
            stream.write_eof()  # most clients close at once on seeing it
        # Held briefly, not counted: it costs a descriptor for at most this long.
        self._loop.call_later(_REFUSED_LINGER, stream.close)
        self._refused_since += 1
        now = self._loop.time()
        if now - self._refused_logged_at >= _REFUSED_LOG_EVERY:
            log.warning("refused %d connection(s): %d are open, the limit (server.max_connections)",
                        self._refused_since, self.open)
            self._refused_logged_at = now
            self._refused_since = 0


class StackdRunner(web.AppRunner):
    """``web.AppRunner`` whose connections enforce :class:`Limits`."""

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", limits.keepalive_timeout)
        kwargs.setdefault("max_line_size", limits.max_header_bytes)
        kwargs.setdefault("max_field_size", limits.max_header_bytes)
        kwargs.setdefault("max_headers", 128)  # aiohttp 3.14's default; 3.10 allowed 32768
        kwargs.setdefault("handler_cancellation", True)
        kwargs.setdefault("shutdown_timeout", _CANCEL_WAIT)
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The Application builds a plain Server (Application._make_handler); same state, our
        # protocol factory on top. The subclass adds no slots, so the swap is sound.
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.limits = self.limits
        server.open = 0
        server._refused_since = 0
        server._refused_logged_at = -_REFUSED_LOG_EVERY
        return server

    def busy_connections(self) -> int:
        server = self.server
        if server is None:
            return 0
        return sum(1 for conn in server.connections if not isinstance(conn, _Handler) or conn.busy)


class _Site(web.SockSite):
    """``web.SockSite`` with the TLS handshake on the headers' deadline.

    The handshake comes before the connection reaches aiohttp (and the header timer and the
    connection count): left at asyncio's default, a client that never finishes it holds a
    descriptor for 60 s.
    """

    __slots__ = ("_handshake_timeout",)

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *, ssl_context: ssl.SSLContext | None,
                 handshake_timeout: float) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=_BACKLOG)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None)


_BACKLOG = 1024


def bind(host: str, port: int, backlog: int = _BACKLOG, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it resolves to; ``""``: all interfaces).

    Bound before the app starts, so a second server on a busy port fails here, before it
    opens (and reconciles) the stores of the running one. ``reuse_port``: a worker's own
    socket beside its siblings' (``SO_REUSEPORT``, stackd.server.workers).
    """
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen: set[tuple[Any, ...]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if port == 0 and socks:  # every address on the one port the kernel picked first
                address = (address[0], socks[0].getsockname()[1], *address[2:])
            key = (family, address)
            if key in seen:
                continue
            seen.add(key)
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # As asyncio does: "::" means IPv6 only, so 0.0.0.0 can be bound beside it.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


async def serve(
    app: web.Application,
    socks: list[socket.socket],
    *,
    limits: Limits,
    ssl_context: ssl.SSLContext | None = None,
    announce: Callable[[], None] = lambda: None,
    stop: asyncio.Event | None = None,
    **runner_kwargs: Any,
) -> None:
    """Start ``app`` on ``socks``, announce, serve until SIGTERM/SIGINT (or ``stop``), then drain."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    hurry = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            hurry.set()  # a second signal: no more grace
        app[DRAINING].set()  # first, so readiness fails before anything else happens
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    _watch_fd_exhaustion(loop)
    fd_watch = asyncio.create_task(_sample_fds())
    runner = StackdRunner(app, limits, **runner_kwargs)
    try:
        try:
            await runner.setup()  # the app's start: stores open, the registry is reconciled
            for sock in socks:
                await _Site(runner, sock, ssl_context=ssl_context, handshake_timeout=limits.header_timeout).start()
            announce()
            await stop.wait()
            await _drain(runner, app, limits.shutdown_grace, hurry)
        finally:
            # Cuts what is left, then the app's cleanup closes what its start opened (also
            # when the start failed half-way, as web.run_app does).
            await runner.cleanup()
    finally:
        fd_watch.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _drain(runner: StackdRunner, app: web.Application, grace: float, hurry: asyncio.Event) -> None:
    app[DRAINING].set()
    for site in list(runner.sites):
        await site.stop()  # no new connections
    server = runner.server
    if server is None:
        return
    server.pre_shutdown()  # idle keep-alive connections close now, busy ones after their answer
    busy = runner.busy_connections()
    if busy:
        log.info("shutting down: waiting up to %g s (server.shutdown_grace) for %d request(s)", grace, busy)
    await _wait_idle(runner, grace, hurry)
    streams, requests = app[STREAMS].end_all()
    if streams or requests:
        log.warning("shutting down: ended %d stream(s) and answered 503 to %d request(s) still running after "
                    "%g s (server.shutdown_grace)", streams, requests, grace)
        await _wait_idle(runner, _END_STREAMS_WAIT, asyncio.Event())
    left = runner.busy_connections()
    if left:
        log.warning("shutting down: cutting %d request(s) still running", left)


async def _wait_idle(runner: StackdRunner, seconds: float, hurry: asyncio.Event) -> None:
    """Until no request is in progress, ``seconds`` pass or ``hurry`` is set.

    Polled: aiohttp tells nobody when a connection's request ends, and a shutdown can afford
    a 50 ms look.
    """
    deadline = asyncio.get_running_loop().time() + seconds
    while runner.busy_connections() and asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), 0.05)
            return


_FDS = Path("/proc/self/fd")


async def _sample_fds() -> None:
    """Say once (again after recovering) that the process is at its open-file limit.

    uvloop (libuv) meets EMFILE on accept by accepting and closing at once, and logs
    nothing, so clients get empty replies for no visible reason; a sample per second of
    /proc/self/fd (Linux) makes it visible.
    """
    limit = fd_limit()
    told = False
    while True:
        await asyncio.sleep(1.0)
        try:
            used = sum(1 for _ in os.scandir(_FDS))
        except FileNotFoundError:
            return  # not Linux: asyncio's accept errors are still caught, see _watch_fd_exhaustion
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            used = limit  # not even the directory could be opened
        if used >= limit - 2 and not told:
            told = True
            _out_of_fds()
        elif used < limit * 0.9:
            told = False


def _out_of_fds() -> None:
    log.error("out of file descriptors (open-file limit %d): new connections are dropped; "
              "raise the limit (ulimit -n) or lower server.max_connections", fd_limit())


def _watch_fd_exhaustion(loop: asyncio.AbstractEventLoop) -> None:
    """Say once, in plain words, that the process is out of file descriptors.

    When accept() fails for lack of descriptors, asyncio logs a traceback each time it retries;
    uvloop logs nothing. Either way new clients wait or get empty replies, and the operator
    needs to know why.
    """
    previous = loop.get_exception_handler()
    told = False

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal told
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            if not told:
                told = True
                _out_of_fds()
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
