"""The HTTP server: aiohttp app factory, routes, SSE and the error shape."""

from stackd.server.app import create_app

__all__ = ["create_app"]
