"""A provider's stream under the client's model name: what the router hands the server.

Each chunk is relabelled (its dict, and its upstream bytes when the server forwards them),
counted for the request's metrics (first token, the last ``usage``) and, when the completion
is to be stored, folded into the stored body (never kept as a list), within a byte budget;
past it the completion is not stored, which is logged once. A stream that ran to its end is
stored; one that broke or was closed early is not.

:class:`Relabelled` is an async iterator like any provider stream, so every consumer (native
routes, guardrails, tests) reads it as one. The SSE writer, which carries nearly every stream,
reads the provider's stream itself and calls :meth:`Relabelled.take` per chunk: one plain call
per event instead of one more async-generator layer (an ``asend`` object, a frame resumed and
a ``StopIteration`` per event).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from itertools import repeat
from typing import Any

import orjson

from stackd.apis.inference import close_stream
from stackd.inference_store.assemble import ChatStreamAssembler
from stackd.observe import current
from stackd.upstream import SSEEvent, relabel_bytes

__all__ = ["Relabelled"]

log = logging.getLogger("stackd.routing")

# Called once with the assembled body and its weight when a stored stream ran to its end.
Keep = Callable[[dict[str, Any], int], None]


class Relabelled:
    """``source``'s chunks under ``identifier``; with ``keep``, stored once it ran to its end
    (``keep`` gets the assembled ``chat.completion`` body and what it weighs)."""

    __slots__ = ("_done", "_head", "_head_new", "_keep", "_lead", "_lead_swap", "_new", "_obs", "_old", "_seen",
                 "_store", "_upstream_name", "_usage", "identifier", "source")

    def __init__(self, source: AsyncIterator[dict[str, Any]], identifier: str, keep: Keep | None,
                 max_stored_bytes: int) -> None:
        self.source = source
        self.identifier = identifier
        self._keep = keep
        self._store = ChatStreamAssembler(max_stored_bytes) if keep is not None else None
        obs = current.get()
        # A shield's own model call: the request's metrics are its client's model's.
        self._obs = obs if obs is not None and obs.model == identifier else None
        self._seen = False
        self._usage: Any = None
        self._done = False
        # The upstream's bytes of an event go out as they came, relabelled on the bytes
        # (stackd.upstream.relabel_bytes); the dict is relabelled too, for the store and hooks.
        self._new = b'"model":' + orjson.dumps(identifier)
        self._upstream_name: Any = None
        self._old = b""
        # The events of one stream start alike (``{"id":"…","object":…,"model":"…"``): the bytes up
        # to the model member that relabel_bytes proved to be the top-level one, and what replaces
        # them. An event that starts with them needs only the check that no other "model" follows.
        self._head = b"\x00"  # matches no JSON payload until set
        self._head_new = b""
        # The head as a frame starts (``data: `` and the head), and the model members it swaps.
        self._lead = b"\x00"
        self._lead_swap = (b"", b"")

    def take(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """One chunk of ``source``, relabelled, counted and folded in (its upstream bytes too, when
        it is an :class:`SSEEvent` that has them)."""
        if chunk.__class__ is SSEEvent:
            chunk.raw = self._one(chunk.raw, chunk)
        else:
            self._one(None, chunk)
        self._first()
        return chunk

    def frames(
        self, payloads: list[bytes | None], events: list[dict[str, Any]], upstream: bytes | None = None
    ) -> bytes:
        """The SSE frames of one upstream read (:meth:`stackd.upstream.SSEStream.next_read`), each
        event as :meth:`take` makes it, written from its own bytes where they could be relabelled.

        ``upstream`` is the read's frames as the upstream wrote them, when it held nothing else:
        when every event in it starts with the proved head and has no other ``"model"``, the
        frames are relabelled in one replace and the events stored together (:meth:`_whole`).
        """
        if not events:
            return b""
        if upstream is not None and len(events) > 1:  # one event: the per-event path costs less
            whole = self._whole(upstream, payloads, events)
            if whole is not None:
                return whole
        one = self._one
        out = [raw if (raw := one(payload, chunk)) is not None else orjson.dumps(chunk)
               for payload, chunk in zip(payloads, events, strict=True)]
        self._first()
        return b"data: " + b"\n\ndata: ".join(out) + b"\n\n"

    def _whole(self, frames: bytes, payloads: list[bytes | None], events: list[dict[str, Any]]) -> bytes | None:
        """``frames`` (``data: {…}\\n\\n`` per event, nothing else) relabelled, their events counted and
        stored; None (nothing done) when an event's bytes cannot be relabelled with the others'.

        Events that already name the identifier go out as they are. Otherwise each must start with
        the head and hold no other ``"model"``: ``data: `` and the head are found only where an
        event starts (inside a string a quote is escaped, and no event holds a line break), so as
        many of them as events means each event starts with them, and as many ``"model"`` as events
        means each event's only one is its head's, the top-level member that is swapped.
        """
        n = len(events)
        identifier = self.identifier
        if list(map(dict.get, events, repeat("model"))).count(identifier) != n:
            lead = self._lead
            if not frames.startswith(lead):
                first = payloads[0]
                if first is None or self._prove(first, events[0].get("model")) is None:
                    return None
                lead = self._lead
            if frames.count(lead) != n or frames.count(b'"model"') != n:
                return None
            frames = frames.replace(*self._lead_swap)
            events[0]["model"] = identifier  # every event names the same model; the store takes the first's
        usages = list(filter(None, map(dict.get, events, repeat("usage"))))
        if usages:
            self._usage = usages[-1]  # the last usage is the total
        if self._store is not None:
            self._fold(events)
        self._first()
        return frames

    def _one(self, raw: bytes | None, chunk: dict[str, Any]) -> bytes | None:
        """The per-event work: ``chunk`` relabelled (and ``raw``, its bytes, or None when they
        cannot be), its usage noted, folded into the stored completion."""
        name = chunk.get("model")
        if name != self.identifier:
            if raw is not None:
                raw = self._relabel(raw, name)
            chunk["model"] = self.identifier
        usage = chunk.get("usage")
        if usage:  # the last usage is the total
            self._usage = usage
        if self._store is not None:
            self._fold((chunk,))
        return raw

    def _first(self) -> None:
        if not self._seen:
            self._seen = True
            if self._obs is not None:
                self._obs.first_chunk()

    def _relabel(self, raw: bytes, name: Any) -> bytes | None:
        """``raw`` relabelled, or None when that cannot be done safely. An event that starts with the
        head the first one proved needs only the check that no other ``"model"`` follows; any other
        goes through :func:`stackd.upstream.relabel_bytes`, and its head is remembered."""
        head = self._head
        if raw.startswith(head) and raw.find(b'"model"', len(head)) < 0:
            return self._head_new + raw[len(head):]
        return self._prove(raw, name)

    def _prove(self, raw: bytes, name: Any) -> bytes | None:
        """``raw`` relabelled by :func:`stackd.upstream.relabel_bytes` (None when it cannot be), and
        its bytes up to its top-level model member remembered as the stream's head."""
        if name != self._upstream_name:
            self._upstream_name = name
            self._old = b'"model":' + orjson.dumps(name) if isinstance(name, str) else b""
        old = self._old
        if not old:
            return None
        out = relabel_bytes(raw, old, self._new)
        if out is not None:
            end = raw.find(old) + len(old)
            self._head = raw[:end]
            self._head_new = out[:end - len(old) + len(self._new)]
            self._lead = b"data: " + self._head
            self._lead_swap = (old, self._new)
        return out

    def _fold(self, chunks: Iterable[dict[str, Any]]) -> None:
        """Add chunks to what is kept, in turn; on failure (logged once) the completion is not stored."""
        store = self._store
        assert store is not None
        try:
            if all(map(store.add, chunks)):  # stops at the first past the budget
                return
        except Exception as exc:  # noqa: BLE001 - an odd chunk is passed on; only its record is given up
            log.warning("a streamed chat completion of model %r is not stored: a chunk could not be "
                        "assembled (%s: %s)", self.identifier, type(exc).__name__, exc)
        else:
            log.warning("streamed chat completion %.80r of model %r is not stored: it passed "
                        "server.max_stored_completion_bytes (%d)", store.id, self.identifier, store.budget)
        self._store = None

    async def ended(self) -> None:
        """``source`` ran to its end: close it, report usage and store what was kept."""
        await self._finish()
        store, keep = self._store, self._keep
        if store is None or keep is None or not self._seen:
            return
        try:
            body = store.body()
        except Exception as exc:  # noqa: BLE001 - odd upstream data costs the record, not the answer
            log.warning("a streamed chat completion of model %r is not stored: it could not be "
                        "assembled (%s: %s)", self.identifier, type(exc).__name__, exc)
            return
        keep(body, store.kept)

    async def aclose(self) -> None:
        """Closed before its end (or after): ``source`` is closed, nothing is stored."""
        await self._finish()

    async def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await close_stream(self.source)
        finally:
            if self._obs is not None and self._usage is not None:
                self._obs.usage(self._usage)

    def __aiter__(self) -> Relabelled:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._done:
            raise StopAsyncIteration
        try:
            return self.take(await self.source.__anext__())
        except StopAsyncIteration:
            await self.ended()
            raise
        except BaseException:
            await self.aclose()
            raise
