"""Hits of one key that arrive while one is on its way to the store go there together.

A busy key (one principal, or every anonymous request from one address) would otherwise make
one round trip to the store per request. Here the first hit goes at once; the hits of the same
key and period that arrive while it is out wait, and then go as one ``hit(key, period, n)``:
the store adds ``n`` in one atomic step and each waiting request takes its own place in the
count, in the order it arrived (the store answered ``count``: they are ``count - n + 1`` to
``count``). So the count stays exact, across processes too: each batch is one atomic increment.
A quiet key costs nothing extra: its hit is not held back.

A request that gives up while it waits (its client went away) is not counted, if it gave up
before its batch left.
"""

from __future__ import annotations

import asyncio

from stackd.quota.counter import Counter, Period

__all__ = ["CoalescingCounter"]

_Key = tuple[str, Period]
_Waiter = asyncio.Future[tuple[int, float]]


class CoalescingCounter:
    """A :class:`stackd.quota.counter.Counter` in front of another, batching hits of a busy key."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        # A key in here has a hit or a batch on its way; its list holds the hits waiting for the next.
        self._waiting: dict[_Key, list[_Waiter]] = {}
        self._batches: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return repr(self.counter)

    async def hit(self, key: str, period: Period, n: int = 1) -> tuple[int, float]:
        which = (key, period)
        waiting = self._waiting.get(which)
        if waiting is not None and n == 1:
            waiter: _Waiter = asyncio.get_running_loop().create_future()
            waiting.append(waiter)
            return await waiter
        self._waiting.setdefault(which, [])
        try:
            return await self.counter.hit(key, period, n)
        finally:
            self._next(which)

    def _next(self, which: _Key) -> None:
        """The hit or batch of ``which`` is back: send the hits that waited meanwhile, if any."""
        waiting = self._waiting.get(which)
        if waiting is None:
            return
        live = [w for w in waiting if not w.done()]
        if not live:
            del self._waiting[which]
            return
        self._waiting[which] = []
        batch = asyncio.get_running_loop().create_task(self._send(which, live))
        self._batches.add(batch)
        batch.add_done_callback(self._batches.discard)

    async def _send(self, which: _Key, waiters: list[_Waiter]) -> None:
        try:
            count, reset = await self.counter.hit(which[0], which[1], len(waiters))
        except asyncio.CancelledError:  # closing: the waiters' requests are being cancelled too
            for waiter in waiters:
                waiter.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter gets the store's failure (a 503)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            self._next(which)
            return
        first = count - len(waiters)
        for place, waiter in enumerate(waiters, start=1):
            if not waiter.done():
                waiter.set_result((first + place, reset))
        self._next(which)

    async def ping(self) -> None:
        await self.counter.ping()

    async def close(self) -> None:
        for batch in list(self._batches):
            batch.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        for waiting in self._waiting.values():
            for waiter in waiting:
                waiter.cancel()
        self._waiting.clear()
        await self.counter.close()
