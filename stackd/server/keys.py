"""Typed application and request state."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web

from stackd.caller import Caller
from stackd.loading import LoadedConfig
from stackd.server.client_address import ClientAddresses
from stackd.server.live_streams import LiveStreams
from stackd.server.readiness import Lifecycle
from stackd.stack import Stack

__all__ = [
    "BODY_TIMEOUT",
    "CALLER",
    "CLIENT_ADDRESSES",
    "CONFIG",
    "DISCARD_BODY",
    "DRAINING",
    "LIFECYCLE",
    "MAX_BODY",
    "MAX_JSON_DEPTH",
    "OPENAPI",
    "RATE_HEADERS",
    "REQUEST_ID",
    "STACK",
    "STALL_TIMEOUT",
    "STARTED_AT",
    "STREAMS",
]

STACK = web.AppKey("stack", Stack)
CLIENT_ADDRESSES = web.AppKey("client_addresses", ClientAddresses)
CONFIG = web.AppKey("config", LoadedConfig)
CALLER = web.RequestKey("caller", Caller)
REQUEST_ID = web.RequestKey("request_id", str)
# The X-RateLimit-* headers of a counted request, sent on whatever answer it gets.
RATE_HEADERS: web.RequestKey[Mapping[str, str]] = web.RequestKey("rate_headers")
STARTED_AT = web.AppKey("started_at", float)
MAX_BODY = web.AppKey("max_body_bytes", int)
MAX_JSON_DEPTH = web.AppKey("max_json_depth", int)
STALL_TIMEOUT = web.AppKey("stream_stall_timeout", float)

BODY_TIMEOUT = web.AppKey("body_timeout", float)
STREAMS = web.AppKey("live_streams", LiveStreams)
# Set on a request whose body was refused unread: the connection closes soon after the answer
# instead of reading (and inflating) the rest (stackd.server.runner).
DISCARD_BODY = web.RequestKey("discard_body", bool)
# The OpenAPI document, serialised once at startup (stackd.server.openapi).
OPENAPI = web.AppKey("openapi", bytes)
# Set at the first SIGTERM/SIGINT, before anything else of the shutdown: readiness answers 503
# from then on, and new work can tell the server is going away (stackd.server.runner).
DRAINING = web.AppKey("draining", asyncio.Event)
# The last readiness run, cached for the probes (stackd.server.readiness).
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
