"""A tiny identity provider for bench/auth.py: a JWKS at /jwks (from a file) and a custom-auth
endpoint at /auth that accepts every token. Run as its own process so its CPU is not stackd's.

    python -m bench.idp --port 9999 --jwks keys.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", type=Path, required=True)
    args = parser.parse_args(argv)
    jwks = args.jwks.read_bytes()

    async def keys(_: web.Request) -> web.Response:
        return web.Response(body=jwks, content_type="application/json")

    async def decide(_: web.Request) -> web.Response:
        return web.json_response({"principal": "bench", "attributes": {"teams": ["bench"]}})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/jwks", keys)
    app.router.add_post("/auth", decide)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
