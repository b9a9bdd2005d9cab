"""Store completions without making anyone wait: a bounded queue and one background writer.

The request handler calls :meth:`InferenceStoreWriter.store` (or ``submit``), which only
checks the body and queues it; a task writes whatever has gathered, one transaction per
batch. Batches form by themselves: while one is being written the next fills up, so a busy
server makes few large transactions and an idle one writes each completion at once.

Reads go through the writer too, and wait for the queued writes they could see, so a client
that fetches a completion right after creating it finds it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from stackd.errors import UpstreamUnavailable
from stackd.inference_store.api import (
    DEFAULT_LIMIT,
    InferenceStore,
    StoredCompletion,
    Visible,
    check_completion,
    check_limit,
    check_order,
)

__all__ = ["InferenceStoreWriter"]

log = logging.getLogger(__name__)


class InferenceStoreWriter:
    """Queues writes to ``store`` and performs them in a background task.

    When the queue is full (``max_queue`` completions, or ``max_queue_bytes`` of them by the
    weight their submitter gives) the *oldest* queued completions are dropped, counted in
    :attr:`dropped` and logged. Blocking instead would turn a slow or unreachable database into
    slow or failing chat completions, and answering is the server's job while storing is a
    record of it. Of the two losses, old entries are the cheaper one: clients read a stored
    completion back soon after creating it, and the log says how many were lost and when.
    """

    def __init__(
        self,
        store: InferenceStore,
        *,
        max_queue: int = 10_000,
        max_queue_bytes: int = 256 * 1024 * 1024,
        max_batch: int = 500,
        retry_delay: float = 0.1,
        max_retry_delay: float = 5.0,
        read_wait: float = 2.0,
        linger: float = 0.02,
    ) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        self.store_backend = store
        self._max_queue = max_queue
        # Counted from submit until written or dropped, so a database that is away cannot make
        # the queue hold more than this however large each completion is.
        self._max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0
        self._max_batch = max_batch
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._read_wait = read_wait
        # Waiting a moment before a write lets a busy server put many completions in one
        # transaction (one thread hand-off and one commit for all), which is most of the cost.
        self._linger = linger
        self._queue: collections.deque[tuple[int, StoredCompletion, int]] = collections.deque()
        self._pending_ids: collections.Counter[str] = collections.Counter()
        self._submitted = 0  # sequence number of the last queued write
        self._done = 0  # every write up to this sequence number is finished (written or lost)
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # replaced each time _done moves
        self._in_flight: int | None = None  # sequence number opening the batch being written
        self._in_flight_size = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0
        self.failed = 0
        self.written = 0
        self._last_drop_log = -math.inf

    def __repr__(self) -> str:
        return (
            f"InferenceStoreWriter({self.store_backend!r}, queued={len(self._queue)}, "
            f"written={self.written}, dropped={self.dropped}, failed={self.failed})"
        )

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, completion: dict[str, Any], input_messages: list[dict[str, Any]], weight: int = 0,
               owner: str | None = None) -> None:
        """Queue one completion; returns at once. Raises ``ValueError`` for an unusable body.

        ``weight`` is roughly the bytes the two take (counted against ``max_queue_bytes``).
        The dicts are serialised later, in the background: do not change them afterwards.
        """
        if self._closing:
            raise RuntimeError("the inference store writer is closed")
        check_completion(completion, input_messages)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="inference-store-writer")
            self._task.add_done_callback(self._task_done)
        if len(self._queue) >= self._max_queue:
            self._drop_oldest()
        self._queued_bytes += weight
        while self._queued_bytes > self._max_queue_bytes and self._queue:
            self._drop_oldest()
        self._submitted += 1
        self._queue.append((self._submitted, (completion, input_messages, owner), weight))
        self._pending_ids[completion["id"]] += 1
        self._wake.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        # _write survives every database error, so this is a bug; say so instead of letting
        # the queue grow silently behind a dead task.
        if not task.cancelled() and task.exception() is not None:
            log.error("inference store writer stopped", exc_info=task.exception())
            self._task = None  # the next submit starts a new one

    async def store(self, completion: dict[str, Any], input_messages: list[dict[str, Any]]) -> None:
        self.submit(completion, input_messages)

    async def store_many(self, items: Sequence[StoredCompletion]) -> None:
        for item in items:
            self.submit(item[0], item[1], owner=item[2] if len(item) > 2 else None)

    def _drop_oldest(self) -> None:
        _, (completion, *_), weight = self._queue.popleft()
        self._queued_bytes -= weight
        self._forget(completion["id"])
        self.dropped += 1
        now = time.monotonic()
        # One line every few seconds: a stuck database must not also flood the log.
        if now - self._last_drop_log >= 5.0:
            self._last_drop_log = now
            log.warning(
                "inference store %r is behind: queue full (%d completions or %d bytes), dropped the "
                "oldest queued completion (%d dropped so far); check the database",
                self.store_backend,
                self._max_queue,
                self._max_queue_bytes,
                self.dropped,
            )
        # A dropped write is finished as far as readers waiting on it are concerned.
        self._advance()

    def _forget(self, completion_id: str) -> None:
        self._pending_ids[completion_id] -= 1
        if self._pending_ids[completion_id] <= 0:
            del self._pending_ids[completion_id]

    def _advance(self) -> None:
        """Move ``_done`` to just before the oldest write still queued or being written."""
        done = self._queue[0][0] - 1 if self._queue else self._submitted
        if self._in_flight is not None:
            done = min(done, self._in_flight - 1)
        if done > self._done:
            self._done = done
            self._progress.set()
            self._progress = asyncio.Event()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._linger and not self._closing and len(self._queue) < self._max_batch:
                await asyncio.sleep(self._linger)
            batch: list[tuple[int, StoredCompletion, int]] = []
            while self._queue and len(batch) < self._max_batch:
                batch.append(self._queue.popleft())
            self._in_flight = batch[0][0]
            self._in_flight_size = len(batch)
            try:
                await self._write([item for _, item, _ in batch])
            finally:
                for _, (completion, *_), weight in batch:
                    self._queued_bytes -= weight
                    self._forget(completion["id"])
                self._in_flight = None
                self._in_flight_size = 0
                self._advance()

    async def _write(self, items: list[StoredCompletion]) -> None:
        delay = self._retry_delay
        while True:
            try:
                await self.store_backend.store_many(items)
            except UpstreamUnavailable as exc:
                # The database is away: keep the batch and try again. Memory stays bounded by
                # the queue, which drops its oldest entries while this goes on; aclose() gives
                # up after its timeout.
                if delay == self._retry_delay:
                    log.warning("inference store %r unavailable, will retry: %s", self.store_backend, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any bad row
                # The database refused the data itself; retrying cannot help. A bad row fails
                # its whole transaction, so the rest of the batch is written one by one.
                if len(items) == 1:
                    self._lost(items, exc)
                    return
                for item in items:
                    await self._write([item])
                return
            else:
                if delay != self._retry_delay:
                    log.info("inference store %r is back", self.store_backend)
                self.written += len(items)
                return

    def _lost(self, items: list[StoredCompletion], exc: BaseException) -> None:
        self.failed += len(items)
        ids = ", ".join(repr(item[0]["id"]) for item in items[:5])
        log.error(
            "inference store %r refused %d completion(s) (%s%s), not stored: %s",
            self.store_backend,
            len(items),
            ids,
            ", ..." if len(items) > 5 else "",
            exc,
        )

    async def flush(self) -> None:
        """Wait until every write queued before this call is finished (written or given up)."""
        target = self._submitted
        while self._done < target:
            await self._progress.wait()

    async def _flush_for_read(self) -> None:
        # A read waits a little for writes it could see, but a database that is away must not
        # hold it: the read then runs (and most likely reports the outage itself).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._read_wait):
                await self.flush()

    async def list(
        self,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        model: str | None = None,
        order: str = "desc",
        visible: Visible | None = None,
    ) -> dict[str, Any]:
        # Check first: a bad request is answered at once, not after the queue drains.
        check_order(order)
        check_limit(limit)
        await self._flush_for_read()
        if visible is None:
            return await self.store_backend.list(after=after, limit=limit, model=model, order=order)
        return await self.store_backend.list(after=after, limit=limit, model=model, order=order, visible=visible)

    async def get(self, completion_id: str, visible: Visible | None = None) -> dict[str, Any]:
        if completion_id in self._pending_ids:
            await self._flush_for_read()
        if visible is None:
            return await self.store_backend.get(completion_id)
        return await self.store_backend.get(completion_id, visible=visible)

    async def messages(
        self,
        completion_id: str,
        after: str | None = None,
        limit: int = DEFAULT_LIMIT,
        order: str = "asc",
        visible: Visible | None = None,
    ) -> dict[str, Any]:
        if completion_id in self._pending_ids:
            await self._flush_for_read()
        if visible is None:
            return await self.store_backend.messages(completion_id, after=after, limit=limit, order=order)
        return await self.store_backend.messages(completion_id, after=after, limit=limit, order=order,
                                                 visible=visible)

    async def aclose(self, give_up_after: float = 30.0) -> None:
        """Write everything still queued, then stop the task. Later ``submit`` calls fail.

        If the database stays away for ``give_up_after`` seconds, what is left is logged as lost
        rather than holding the shutdown forever.
        """
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), give_up_after)
        except TimeoutError:
            lost = len(self._queue) + self._in_flight_size
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._queue.clear()
            self._queued_bytes = 0
            self._pending_ids.clear()
            self._advance()  # wake readers still waiting on the abandoned writes
            log.error(
                "inference store %r: still unavailable after %.0f s at shutdown; "
                "%d queued completion(s) not stored",
                self.store_backend,
                give_up_after,
                lost,
            )
            self.failed += lost

    async def close(self) -> None:
        """Drain (:meth:`aclose`), then close the store."""
        try:
            await self.aclose()
        finally:
            await self.store_backend.close()
