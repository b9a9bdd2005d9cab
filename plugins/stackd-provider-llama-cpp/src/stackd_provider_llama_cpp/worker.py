"""One thread per llama.cpp model: its requests run one after another, off the event loop.

A llama.cpp context is not thread-safe, and on a small machine two generations at once would
only split the same cores; a single-thread executor is the queue. Streamed chunks cross to
the event loop with ``call_soon_threadsafe``, so the loop never waits on llama.cpp.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from stackd_provider_llama_cpp.runtime import CancellableLlama, RunStats

__all__ = ["ChunkStream", "ModelWorker"]

T = TypeVar("T")

_CHUNK, _END, _ERROR = 0, 1, 2


class ModelWorker:
    """Runs jobs against one loaded model on its own thread."""

    def __init__(self, name: str, llama: CancellableLlama) -> None:
        self.name = name
        self.llama = llama
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-cpp-{name}")
        # Cancel flags of queued and running jobs, so close() can stop them all.
        self._active: set[threading.Event] = set()

    async def run(self, job: Callable[[CancellableLlama], T]) -> tuple[T, RunStats]:
        """Run ``job(llama)`` on the model's thread. Cancelling the awaiting task drops the job
        if it has not started and stops its generation at the next token if it has."""
        cancel = threading.Event()
        stats = RunStats()
        self._active.add(cancel)

        def call() -> tuple[T, RunStats]:
            if cancel.is_set():
                raise asyncio.CancelledError
            self.llama.cancel, self.llama.stats = cancel, stats
            try:
                return job(self.llama), stats
            finally:
                self.llama.cancel = self.llama.stats = None

        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await future
        except asyncio.CancelledError:
            cancel.set()
            raise
        finally:
            self._active.discard(cancel)

    async def stream(
        self,
        job: Callable[[CancellableLlama], Iterator[dict[str, Any]]],
        on_error: Callable[[BaseException], BaseException] = lambda exc: exc,
        tail: Callable[[dict[str, Any], RunStats], dict[str, Any]] | None = None,
    ) -> ChunkStream:
        """Start ``job(llama)`` (which returns a chunk iterator) on the model's thread and return
        once its first chunk is there, so that a failure before it (prompt too long...) is raised
        here rather than inside the stream. ``tail(last_chunk, stats)`` makes one more chunk
        after a generation that ran to its end (the usage chunk)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        cancel = threading.Event()
        stats = RunStats()
        self._active.add(cancel)

        def send(kind: int, item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        def produce() -> None:
            chunks: Iterator[dict[str, Any]] | None = None
            try:
                if cancel.is_set():
                    send(_END, stats)
                    return
                self.llama.cancel, self.llama.stats = cancel, stats
                chunks = job(self.llama)
                for chunk in chunks:
                    if cancel.is_set():
                        break
                    send(_CHUNK, chunk)
                send(_END, stats)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, which re-raises it
                send(_ERROR, exc)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
                self.llama.cancel = self.llama.stats = None
                self._active.discard(cancel)

        self._executor.submit(produce)
        stream = ChunkStream(queue, cancel, stats, on_error, tail)
        try:
            await stream.prefetch()
        except BaseException:
            cancel.set()
            raise
        return stream

    def close(self) -> None:
        """Stop every job, wait for the running one to notice, then free the model. Blocks."""
        for cancel in list(self._active):
            cancel.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.llama.close()


class ChunkStream(AsyncIterator[dict[str, Any]]):
    """The chunks of one streamed generation. ``aclose()`` (the client went away) stops the
    generation at its next token."""

    def __init__(
        self,
        queue: asyncio.Queue[tuple[int, Any]],
        cancel: threading.Event,
        stats: RunStats,
        on_error: Callable[[BaseException], BaseException],
        tail: Callable[[dict[str, Any], RunStats], dict[str, Any]] | None = None,
    ) -> None:
        self._queue = queue
        self._on_error = on_error
        self._tail = tail
        self._last: dict[str, Any] | None = None
        self._cancel = cancel
        self.stats = stats
        self._first: dict[str, Any] | None = None
        self._done = False

    async def prefetch(self) -> None:
        with contextlib.suppress(StopAsyncIteration):
            self._first = await self._next()

    async def _next(self) -> dict[str, Any]:
        if self._done:
            raise StopAsyncIteration
        try:
            kind, item = await self._queue.get()
        except BaseException:
            self._cancel.set()
            raise
        if kind == _CHUNK:
            self._last = item
            return item  # type: ignore[no-any-return]
        self._done = True
        if kind == _END and self._tail is not None and self._last is not None and not self._cancel.is_set():
            return self._tail(self._last, self.stats)
        if kind == _ERROR:
            mapped = self._on_error(item)
            if mapped is item:
                raise item
            raise mapped from item
        raise StopAsyncIteration

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await self._next()

    async def aclose(self) -> None:
        self._done = True
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()
