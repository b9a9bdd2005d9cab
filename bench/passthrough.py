"""The floor of an aiohttp proxy: a reference target of ``bench/run.py``, not part of stackd.

    python -m bench.passthrough --port 8100 --upstream http://127.0.0.1:8000

Every request is forwarded as bytes (method, path, query, body, Content-Type) through one
pooled ClientSession, and the answer's bytes are streamed back as they arrive: no JSON, no
checks, no store. What stackd costs beyond this is the price of what it does to a request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["main", "make_app"]

_SESSION = web.AppKey("session", aiohttp.ClientSession)
_UPSTREAM = web.AppKey("upstream", str)
_PASSED = ("Content-Type", "Cache-Control")


async def _forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    session = request.app[_SESSION]
    async with session.request(request.method, request.app[_UPSTREAM] + request.path_qs, data=body,
                               headers=headers) as upstream:
        passed = {k: upstream.headers[k] for k in _PASSED if k in upstream.headers}
        if upstream.content_length is not None:
            # A whole answer of known size leaves in one write, headers and body together.
            return web.Response(status=upstream.status, body=await upstream.read(), headers=passed)
        response = web.StreamResponse(status=upstream.status, headers=passed)
        await response.prepare(request)
        async for block in upstream.content.iter_any():
            await response.write(block)
        await response.write_eof()
        return response


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[_UPSTREAM] = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:
            app[_SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL of the server to forward to")
    args = parser.parse_args(argv)
    runner: Any = asyncio.run
    try:
        import uvloop  # as stackd serves: the comparison is of the Python above the loop

        runner = uvloop.run
    except ImportError:
        pass

    async def serve() -> None:
        web_runner = web.AppRunner(make_app(args.upstream), access_log=None)
        await web_runner.setup()
        await web.TCPSite(web_runner, args.host, args.port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await web_runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        runner(serve())


if __name__ == "__main__":
    main()
