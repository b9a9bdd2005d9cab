"""The load generator: its own process, so its CPU is not charged to the server under test.

Run by ``bench/run.py``; standalone (no stackd imports) so it starts fast and measures only
the client. Protocol on stdin/stdout, so the driver can read the servers' CPU counters
exactly around the measured phase::

    loadgen -> {"phase": "warm", ...}   after the warm-up requests
    driver  -> "go\\n"
    loadgen -> {"phase": "done", ...}   the measured phase's results (one JSON line)

Each of ``concurrency`` workers sends requests back to back over its own keep-alive
connection until ``requests`` were sent or ``max_seconds`` passed. Streams are read in the
pieces the socket delivers (not line by line, which would make the client the bottleneck);
events are counted on the whole body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp

__all__ = ["main"]

_DONE = b"data: [DONE]"


def _body(model: str, stream: bool) -> bytes:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say something about benchmarks, please."}],
        "stream": stream,
    }
    return json.dumps(payload).encode()


class _Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.first_bytes: list[float] = []
        self.events = 0
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, stats: _Stats, expect_done: bool
) -> None:
    start = time.perf_counter()
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                await resp.read()
                stats.error(f"HTTP {resp.status}")
                return
            if stream:
                first = await resp.content.readany()
                stats.first_bytes.append(time.perf_counter() - start)
                rest = await resp.read()
                data = first + rest
                if b'data: {"error"' in data:
                    stats.error("error frame in stream")
                    return
                if expect_done and not data.rstrip().endswith(_DONE):
                    stats.error("stream without [DONE]")
                    return
                # Every frame but the closing [DONE] is one event (chunk).
                stats.events += data.count(b"data: ") - (1 if expect_done else 0)
            else:
                data = await resp.read()
                if not data.startswith(b"{") or b'"choices"' not in data:
                    stats.error("not a chat.completion")
                    return
    except (TimeoutError, aiohttp.ClientError) as exc:
        stats.error(type(exc).__name__)
        return
    stats.latencies.append(time.perf_counter() - start)


async def _run(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    stream: bool,
    concurrency: int,
    requests: int,
    max_seconds: float,
    expect_done: bool,
) -> tuple[_Stats, float, int]:
    stats = _Stats()
    sent = 0
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            await _one(session, url, body, stream, stats, expect_done)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return stats, time.perf_counter() - start, sent


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _main(args: argparse.Namespace) -> None:
    body = _body(args.model, args.stream)
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    # An Authorization header on every request (the auth benchmark): one hot token per run.
    headers = {"Authorization": f"Bearer {args.bearer}"} if args.bearer else None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        # Warm-up: opens the connections (client->server and the server's own pool upstream).
        warm_requests = max(args.warmup, args.concurrency)
        warm, warm_elapsed, _ = await _run(
            session, args.url, body, args.stream, args.concurrency, warm_requests, args.max_seconds, args.done
        )
        _emit({"phase": "warm", "ok": len(warm.latencies), "errors": warm.errors, "seconds": warm_elapsed})
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return
        cpu0 = time.process_time()
        stats, elapsed, sent = await _run(
            session, args.url, body, args.stream, args.concurrency, args.requests, args.max_seconds, args.done
        )
        cpu = time.process_time() - cpu0
    lat = sorted(stats.latencies)
    ttfb = sorted(stats.first_bytes)
    ok = len(lat)
    _emit({
        "phase": "done",
        "sent": sent,
        "ok": ok,
        "errors": stats.errors,
        "seconds": elapsed,
        "rps": ok / elapsed if elapsed else 0.0,
        "events": stats.events,
        "events_per_s": stats.events / elapsed if elapsed else 0.0,
        "p50_ms": _ms(_percentile(lat, 0.50)),
        "p99_ms": _ms(_percentile(lat, 0.99)),
        "ttfb_p50_ms": _ms(_percentile(ttfb, 0.50)),
        "ttfb_p99_ms": _ms(_percentile(ttfb, 0.99)),
        "client_cpu_ms_per_req": cpu * 1000 / ok if ok else None,
    })


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="stackd benchmark load generator (driven by bench/run.py)")
    parser.add_argument("--url", required=True, help="the chat completions URL (127.0.0.1 only)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time bound of each phase")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests (at least the concurrency)")
    parser.add_argument("--no-done", dest="done", action="store_false",
                        help="streams end without data: [DONE] (Llama Stack 0.2.x never sends it)")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--bearer", default=None, help="send Authorization: Bearer <token> (bench/auth.py)")
    args = parser.parse_args(argv)
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("--url must be on http://127.0.0.1: the benchmark never leaves this machine")
    try:
        import uvloop  # the client must not be the slowest of the three processes

        uvloop.run(_main(args))
    except ImportError:
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
