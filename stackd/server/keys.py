"""Typed application and request state."""

from __future__ import annotations

from aiohttp import web

from stackd.config.loader import LoadedConfig
from stackd.providers.spec import CallContext, Caller
from stackd.stack import Stack

__all__ = ["CALLER", "CONFIG", "STACK", "STARTED_AT", "MAX_BODY", "context"]

STACK = web.AppKey("stack", Stack)
CONFIG = web.AppKey("config", LoadedConfig)
CALLER = web.RequestKey("caller", Caller)
STARTED_AT = web.AppKey("started_at", float)
MAX_BODY = web.AppKey("max_body_bytes", int)


def context(request: web.Request, provider_data: dict | None = None) -> CallContext:  # type: ignore[type-arg]
    from stackd.server.http import provider_data as read_provider_data

    return CallContext(
        caller=request[CALLER],
        provider_data=read_provider_data(request) if provider_data is None else provider_data,
    )
