"""The requests and streams being served, so that a shutdown past its grace ends each with an
answer (a 503, or a stream's last frame) instead of a cut connection."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs

__all__ = ["LiveStreams"]


@attrs.define
class LiveStreams:
    """Handler tasks in flight (``requests``) and those among them serving a stream (``tasks``).
    A task joins when it starts and leaves when it ends: two set operations, nothing per event."""

    tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    requests: set[asyncio.Task[Any]] = attrs.field(factory=set)
    ending: set[asyncio.Task[Any]] = attrs.field(factory=set)

    def end_all(self) -> tuple[int, int]:
        """Cancel every request still running; :func:`stackd.server.sse.stream_sse` turns that into
        a stream's last frame, :func:`stackd.server.app.drain_middleware` into a 503. Returns how
        many streams and other requests were ended."""
        for task in (self.tasks | self.requests) - self.ending:
            self.ending.add(task)
            task.cancel()
        streams = sum(1 for task in self.ending if task in self.tasks)
        return streams, len(self.ending) - streams

    def ended_by_shutdown(self, task: asyncio.Task[Any]) -> bool:
        return task in self.ending
