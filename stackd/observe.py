"""What is observed of one request while it is served: one :class:`Observation`, in a contextvar.

The server's access middleware (:mod:`stackd.server.access`) makes it and reads it back for
the access line and the request metrics; the few places that know more fill it in: the
router (the model, the first streamed chunk, the usage), the upstream layer (the time spent
waiting on upstreams, the request id it forwards), the gate (the principal's hash). Nothing
here costs more than an attribute write; nothing runs per stream chunk except in the router's
existing loop.

Outside a request (start-up, a background refresh) :data:`current` holds None and every
helper does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

__all__ = ["Observation", "current"]


class Observation:
    """One request as the access line and the metrics see it."""

    __slots__ = ("first_token", "model", "principal", "request_id", "started", "tokens_in", "tokens_out",
                 "upstream")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started = time.perf_counter()
        self.model: str | None = None  # a registered model id, never a client's raw string
        self.principal: str | None = None  # a keyed hash of the principal, never a token
        self.first_token: float | None = None  # seconds from the start to the first streamed chunk
        self.upstream = 0.0  # seconds waited on upstreams for their answer's head
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None

    def served_model(self, model_id: str) -> None:
        """The first model resolved is the client's; a shield's own model calls come later."""
        if self.model is None:
            self.model = model_id

    def first_chunk(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.started

    def usage(self, usage: Any) -> None:
        """Token counts from an OpenAI ``usage`` object (the last one of a stream is the total)."""
        if isinstance(usage, Mapping):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if isinstance(prompt, int) and prompt >= 0:
                self.tokens_in = prompt
            if isinstance(completion, int) and completion >= 0:
                self.tokens_out = completion


current: ContextVar[Observation | None] = ContextVar("stackd_observation", default=None)
