"""CPU per request of the drain bookkeeping (``stackd.server.app.drain_middleware``): the same
trivial handler awaited bare and through the middleware, interleaved rounds, in one process.

    python -m bench.drain_overhead            # prints µs per request added, median and spread
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from stackd.server.app import drain_middleware
from stackd.server.keys import STREAMS
from stackd.server.live_streams import LiveStreams


class _Request:
    def __init__(self) -> None:
        self.app: dict[Any, Any] = {STREAMS: LiveStreams()}


async def _handler(request: Any) -> Any:
    return request


async def _round(n: int, wrapped: bool) -> float:
    request: Any = _Request()
    started = time.process_time()
    if wrapped:
        for _ in range(n):
            await drain_middleware(request, _handler)
    else:
        for _ in range(n):
            await _handler(request)
    return (time.process_time() - started) / n


async def main(rounds: int = 15, n: int = 100_000) -> None:
    added = []
    for _ in range(rounds):
        bare = await _round(n, False)
        wrapped = await _round(n, True)
        added.append((wrapped - bare) * 1e6)
    added.sort()
    print(f"drain_middleware adds {statistics.median(added):.2f} µs CPU per request "
          f"(min {added[0]:.2f}, max {added[-1]:.2f}, {rounds} rounds of {n})")


if __name__ == "__main__":
    asyncio.run(main())
