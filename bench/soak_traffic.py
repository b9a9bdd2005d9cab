"""The soak test's traffic: a weighted mix of well-behaved and misbehaving clients.

Each request kind knows what a correct answer looks like and records one outcome label
(``"200"``, ``"400"``, ``"503"``, ``"ClientOSError"``, ``"bad body"``, ...) per request, so the
driver can tell an expected status (400 for malformed JSON) from a failure. Everything is
on 127.0.0.1; every loop is bounded by the phase's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import attrs
import orjson

__all__ = ["EXPECTED", "KINDS", "Traffic", "run_phase"]

_JSON = {"Content-Type": "application/json"}
_DONE = b"data: [DONE]"
_ERROR_FRAME = b'data: {"error"'
_PROMPT = [{"role": "user", "content": "Say something about soak tests, please."}]

# (kind, weight): OpenAI chat is most of it; ~5% hang up mid-stream, ~1% send broken JSON.
KINDS: tuple[tuple[str, float], ...] = (
    ("chat_stream", 38.0),
    ("chat", 30.0),
    ("native_stream", 8.0),
    ("embeddings", 4.0),
    ("native_embeddings", 2.0),
    ("models", 4.0),
    ("list_stored", 4.0),
    ("get_stored", 4.0),
    ("disconnect", 5.0),
    ("malformed", 1.0),
)
# The outcome each kind must have; anything else is an error of the run.
EXPECTED: dict[str, str] = {kind: "200" for kind, _ in KINDS} | {"disconnect": "hung up", "malformed": "400"}


@attrs.define
class Traffic:
    """Shared state of the workers: outcome counters (reset by the sampler) and ids seen."""

    base: str  # http://127.0.0.1:<port>
    model: str
    embed_model: str
    outcomes: Counter[str] = attrs.field(factory=Counter)  # "kind:outcome" since the last sample
    totals: Counter[str] = attrs.field(factory=Counter)  # "kind:outcome" over the run
    # Completion ids stackd answered on OpenAI chat routes: every one must be stored.
    ids: list[str] = attrs.field(factory=list)
    examples: dict[str, str] = attrs.field(factory=dict)  # first body of each unexpected outcome

    def record(self, kind: str, outcome: str, detail: bytes = b"") -> None:
        key = f"{kind}:{outcome}"
        self.outcomes[key] += 1
        self.totals[key] += 1
        if outcome != EXPECTED[kind] and key not in self.examples:
            self.examples[key] = detail[:300].decode(errors="replace")


def _id_of(data: bytes) -> str | None:
    # Both answers and stream chunks start their JSON with the id; no full parse needed.
    start = data.find(b'"id":"')
    if start < 0:
        return None
    start += 6
    return data[start : data.index(b'"', start)].decode()


async def _post(traffic: Traffic, session: aiohttp.ClientSession, kind: str, path: str, body: Any,
                check: Callable[[bytes], str | None]) -> None:
    async with session.post(traffic.base + path, data=orjson.dumps(body), headers=_JSON) as resp:
        data = await resp.read()
        status = str(resp.status)
    if status == "200":
        problem = check(data)
        if problem is not None:
            traffic.record(kind, problem, data)
            return
    traffic.record(kind, status, data)


async def _get(traffic: Traffic, session: aiohttp.ClientSession, kind: str, path: str) -> None:
    async with session.get(traffic.base + path) as resp:
        data = await resp.read()
        ok = resp.status != 200 or data.startswith(b"{")
        traffic.record(kind, str(resp.status) if ok else "bad body", data)


def _check_chat(traffic: Traffic) -> Callable[[bytes], str | None]:
    def check(data: bytes) -> str | None:
        if b'"choices"' not in data:
            return "bad body"
        completion_id = _id_of(data)
        if completion_id is None:
            return "no id"
        traffic.ids.append(completion_id)
        return None

    return check


def _check_stream(traffic: Traffic | None) -> Callable[[bytes], str | None]:
    def check(data: bytes) -> str | None:
        if _ERROR_FRAME in data:
            return "error frame"
        if traffic is not None:  # OpenAI route: ends with [DONE], stored under its id
            if not data.rstrip().endswith(_DONE):
                return "no [DONE]"
            completion_id = _id_of(data)
            if completion_id is None:
                return "no id"
            traffic.ids.append(completion_id)
        elif b"event_type" not in data or b'"complete"' not in data:
            return "bad native stream"
        return None

    return check


def _check_embeddings(data: bytes) -> str | None:
    return None if b'"embedding' in data else "bad body"


async def _disconnect(traffic: Traffic, rng: random.Random) -> None:
    """A client that reads the first events of a stream, then goes away without a word."""
    host_port = traffic.base.removeprefix("http://")
    host, port = host_port.rsplit(":", 1)
    body = orjson.dumps({"model": traffic.model, "messages": _PROMPT, "stream": True})
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host_port.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body
        )
        await writer.drain()
        got = b""
        while b"data: " not in got:
            piece = await reader.read(4096)
            if not piece:
                traffic.record("disconnect", "closed by server", got)
                return
            got += piece
        if not got.startswith(b"HTTP/1.1 200"):
            traffic.record("disconnect", got[9:12].decode(errors="replace"), got)
            return
        traffic.record("disconnect", "hung up")
    finally:
        # Half the time a FIN (close), half an abort (unread data -> RST): both are real clients.
        if rng.random() < 0.5:
            writer.transport.abort()
        else:
            writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def _malformed(traffic: Traffic, session: aiohttp.ClientSession) -> None:
    broken = b'{"model": "' + traffic.model.encode() + b'", "messages": [{"role": "user", "content": "hi"'
    async with session.post(traffic.base + "/v1/chat/completions", data=broken, headers=_JSON) as resp:
        data = await resp.read()
        status = str(resp.status)
    # A 400 must say what is wrong, as JSON, and never carry a traceback.
    if status == "400" and (not data.startswith(b"{") or b"Traceback" in data):
        status = "400 bad body"
    traffic.record("malformed", status, data)


def _requester(traffic: Traffic, session: aiohttp.ClientSession, rng: random.Random
               ) -> dict[str, Callable[[], Awaitable[None]]]:
    chat = {"model": traffic.model, "messages": _PROMPT}
    native = {"model_id": traffic.model, "messages": _PROMPT, "stream": True}

    def get_stored() -> Awaitable[None]:
        # A completion created a moment ago (reads wait for queued writes) or any older one.
        ids = traffic.ids
        if not ids:
            return _get(traffic, session, "get_stored", "/v1/chat/completions?limit=1")
        pick = ids[-1] if rng.random() < 0.5 else ids[rng.randrange(len(ids))]
        return _get(traffic, session, "get_stored", f"/v1/chat/completions/{pick}")

    return {
        "chat_stream": lambda: _post(traffic, session, "chat_stream", "/v1/chat/completions",
                                     chat | {"stream": True}, _check_stream(traffic)),
        "chat": lambda: _post(traffic, session, "chat", "/v1/chat/completions", chat, _check_chat(traffic)),
        "native_stream": lambda: _post(traffic, session, "native_stream", "/v1/inference/chat-completion",
                                       native, _check_stream(None)),
        "embeddings": lambda: _post(traffic, session, "embeddings", "/v1/embeddings",
                                    {"model": traffic.embed_model, "input": ["soak", "test"]}, _check_embeddings),
        "native_embeddings": lambda: _post(traffic, session, "native_embeddings", "/v1/inference/embeddings",
                                           {"model_id": traffic.embed_model, "contents": ["soak"]},
                                           _check_embeddings),
        "models": lambda: _get(traffic, session, "models", "/v1/models"),
        "list_stored": lambda: _get(traffic, session, "list_stored", "/v1/chat/completions?limit=5"),
        "get_stored": get_stored,
        "disconnect": lambda: _disconnect(traffic, rng),
        "malformed": lambda: _malformed(traffic, session),
    }


async def run_phase(traffic: Traffic, concurrency: int, seconds: float, seed: int) -> int:
    """``concurrency`` workers send the mix back to back until ``seconds`` pass; returns requests sent."""
    names = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    deadline = time.monotonic() + seconds
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    # 60 s per request: far above any answer of a healthy server, so a hang is seen as an error.
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(n: int) -> None:
            nonlocal sent
            rng = random.Random(seed * 100_003 + n)
            requests = _requester(traffic, session, rng)
            while time.monotonic() < deadline:
                kind = rng.choices(names, weights)[0]
                sent += 1
                try:
                    await requests[kind]()
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    traffic.record(kind, type(exc).__name__, str(exc).encode())

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return sent
