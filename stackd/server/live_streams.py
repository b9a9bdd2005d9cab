"""What is being served: the streams, so that a shutdown can end them with a last frame instead of
a cut, and the count of requests, for the in-flight gauge."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs

__all__ = ["InFlight", "LiveStreams"]


class InFlight:
    """Requests being served: a plain count (two integer operations a request), read into the
    in-flight gauge when it is scraped (stackd.server.access.sample); a gauge's own inc/dec
    take a lock each."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


@attrs.define
class LiveStreams:
    """Tasks serving a stream now. A task joins when its stream starts and leaves when it ends:
    two set operations per stream, nothing per event."""

    tasks: set[asyncio.Task[Any]] = attrs.field(factory=set)
    ending: set[asyncio.Task[Any]] = attrs.field(factory=set)

    def end_all(self) -> int:
        """Cancel every stream; :func:`stackd.server.sse.stream_sse` turns that into its last frame."""
        for task in self.tasks - self.ending:
            self.ending.add(task)
            task.cancel()
        return len(self.ending)

    def ended_by_shutdown(self, task: asyncio.Task[Any]) -> bool:
        return task in self.ending
