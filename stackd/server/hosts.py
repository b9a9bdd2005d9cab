"""Which ``Host`` a request may name: the guard against DNS rebinding.

A web page on evil.example can make the browser resolve evil.example to 127.0.0.1 and then
talk to a local stackd as a same-origin page; the one thing that gives it away is the ``Host``
header, which still names evil.example. A server listening on a loopback address therefore
answers only requests addressed to a loopback name, unless ``server.allowed_hosts`` says
otherwise. The check is a set lookup per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from stackd.errors import MisdirectedRequest

__all__ = ["LOOPBACK_NAMES", "allowed_hosts", "host_middleware", "hostname"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hostname(header: str) -> str:
    """The name of a ``Host`` header without its port, lower case: ``[::1]:8321`` -> ``[::1]``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] or header
    name = header.rpartition(":")[0] if ":" in header else header
    return name.rstrip(".")  # "localhost." is the same name, fully qualified


def allowed_hosts(setting: Sequence[str] | None, listen_host: str) -> frozenset[str] | None:
    """The names a request may address, or None for any.

    Without a setting: loopback names when the server listens on a loopback address (plus that
    address), else any. ``"*"`` in the setting allows any.
    """
    if setting is None:
        if not _is_loopback(listen_host):
            return None
        listen = listen_host.lower()
        if ":" in listen and not listen.startswith("["):
            listen = f"[{listen}]"
        return LOOPBACK_NAMES | {listen}
    if "*" in setting:
        return None
    return frozenset(hostname(h) if h.startswith("[") or h.count(":") <= 1 else f"[{h.lower()}]" for h in setting)


def host_middleware(allowed: frozenset[str]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Host")
        # No Host at all is an HTTP/1.0 client, never a browser: nothing to rebind.
        if header is not None and hostname(header) not in allowed:
            raise MisdirectedRequest(
                f"this server does not answer requests for host {header[:64]!r}; address it as one of "
                f"{', '.join(sorted(allowed))}, or add the name to server.allowed_hosts"
            )
        return await handler(request)

    return middleware
