"""Serving a small aiohttp app on 127.0.0.1 for a test: an identity provider, an upstream's stand-in."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

from aiohttp import web

__all__ = ["local_server"]


@contextlib.asynccontextmanager
async def local_server(app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """``app`` on 127.0.0.1 at a port the kernel picks; yields its base URL (``http://127.0.0.1:PORT``,
    or ``https://`` with ``ssl_context``) and stops it on exit."""
    sock = socket.create_server(("127.0.0.1", 0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        scheme = "https" if ssl_context is not None else "http"
        yield f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()
