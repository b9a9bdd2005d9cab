"""A small, fast fake of an OpenAI-compatible server (vLLM, llama.cpp's server, ...).

It speaks the documented wire format, errors included, so providers can be tested where no
real server can run, and it is cheap enough per request to be the upstream of benchmarks:
answers and stream events are serialised once per (model, length) and cached.

In tests::

    async with FakeOpenAI(models=["m"]) as fake:
        fake.url            # http://127.0.0.1:<port>
        fake.fault = Fault(status=400)   # every inference route answers an OpenAI error body
        fake.requests       # the bodies and headers received, in order

As a process (what the benchmark drives)::

    python -m stackd.testing.fake_openai --port 8000 --chunks 64

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (SSE when ``stream``; usage last
when ``stream_options.include_usage``), ``POST /v1/completions``, ``POST /v1/embeddings``,
``GET /health``. The number of content tokens is ``chunks``, capped by the request's
``max_tokens`` (then ``finish_reason`` is ``"length"``).

``reply`` makes chat answers depend on the request: a function of the body that returns the
answer's text (streamed one word per event) or None for the usual ``tok0 tok1 ...``.
:func:`llama_guard` builds one that answers Llama Guard prompts as a Llama Guard 3 model does
(``safe`` / ``unsafe\nS1,S3``), so one fake serves both a chat model and its guard model.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import functools
import hashlib
import itertools
import re
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import attrs
import orjson
from aiohttp import web

__all__ = ["FakeOpenAI", "Fault", "Received", "Reply", "llama_guard", "main"]

_CREATED = 1_700_000_000
_INFERENCE_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_JSON = "application/json"


@attrs.frozen
class Fault:
    """A failure the fake plays on the routes in ``FakeOpenAI.fault_on``.

    - ``status``: answer this HTTP status with an OpenAI error body (``message``, ``error_type``).
    - ``non_json``: answer 200 with an HTML body.
    - ``cut_after``: streams send this many events then drop the connection without ``[DONE]``;
      non-stream answers announce their full length and drop the connection half-way.
    - ``delay``: wait this long before the status line (for client timeouts).
    - ``body``: answer 200 with these bytes as JSON instead of the answer (odd shapes);
      ``events``: stream these SSE events (whole ``data: ...\n\n`` frames), then ``[DONE]``.
    - ``huge``: a non-stream answer of this many bytes (a valid answer whose content is
      padded), or a stream whose second event is one line of this many bytes; written in
      64 KiB pieces as the client reads, never held whole. ``announce_length`` sends its
      Content-Length (else the body is chunked).
    - ``drip``: after ``drip_after`` stream events (a non-stream answer: from its first byte),
      send the rest one byte every ``drip`` seconds, a byte stream that never goes quiet.
    """

    status: int | None = None
    message: str = "fake upstream error"
    error_type: str = "invalid_request_error"
    non_json: bool = False
    cut_after: int | None = None
    delay: float = 0.0
    body: bytes | None = None
    events: tuple[bytes, ...] | None = None
    huge: int | None = None
    announce_length: bool = True
    drip: float | None = None
    drip_after: int = 0


@attrs.frozen
class Received:
    """One request as the fake saw it."""

    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    # The client's (host, port): equal for two requests when the client reused a connection.
    peer: tuple[str, int] | None = None


Reply = Callable[[dict[str, Any]], "str | None"]
"""The text of a chat answer for a request body, or None for the default answer."""


@attrs.define(eq=False)
class FakeOpenAI:
    """The fake server; its public attributes are knobs a test may change between requests."""

    models: Sequence[str] = ("fake-model",)
    chunks: int = 16
    # Pause between stream events, so a test can disconnect mid-stream.
    chunk_delay: float = 0.0
    embedding_dim: int = 8
    api_key: str | None = None  # when set, other bearer tokens get 401
    record: bool = True  # keep every request body; off for benchmarks
    # A fresh chat completion id per answer, as real servers give: stores keyed by id (Llama
    # Stack's) reject a repeated one. Off by default, so tests can expect "chatcmpl-fake".
    unique_ids: bool = False
    fault: Fault | None = None
    fault_on: tuple[str, ...] = _INFERENCE_ROUTES
    reply: Reply | None = None
    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None  # serve https (tests of tls_verify)

    requests: list[Received] = attrs.field(factory=list, init=False)
    # Streams whose client went away before the end (the write failed).
    disconnects: int = attrs.field(default=0, init=False)
    disconnected: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _runner: web.AppRunner | None = attrs.field(default=None, init=False, repr=False)
    _bound_port: int | None = attrs.field(default=None, init=False, repr=False)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("FakeOpenAI is not started; use `async with FakeOpenAI() as fake`")
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self._bound_port}"

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._guard(self._models))
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/chat/completions", self._guard(self._chat))
        app.router.add_post("/v1/completions", self._guard(self._completions))
        app.router.add_post("/v1/embeddings", self._guard(self._embeddings))
        return app

    async def start(self) -> None:
        # No access log: it costs more CPU than answering, and benchmarks measure this process.
        # Handler cancellation: a client that hangs up on a slow answer ends it at once, so a
        # test that timed out does not wait for the fake's sleep at shutdown.
        self._runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context
        )
        await site.start()
        self._bound_port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def reset(self) -> None:
        """Forget recorded requests and disconnects, and clear the fault."""
        self.requests.clear()
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self.fault = None

    # -- plumbing -----------------------------------------------------------------------------

    def _guard(
        self, handler: Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """Record, authenticate, play the fault, parse the body: what every route shares."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            body: dict[str, Any] = {}
            if request.method == "POST":
                raw = await request.read()
                try:
                    parsed = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return _error(400, "the body is not valid JSON", "invalid_request_error")
                if not isinstance(parsed, dict):
                    return _error(400, "the body must be a JSON object", "invalid_request_error")
                body = parsed
            if self.record:
                peer = request.transport.get_extra_info("peername") if request.transport else None
                self.requests.append(
                    Received(
                        request.path,
                        body if request.method == "POST" else None,
                        dict(request.headers),
                        tuple(peer[:2]) if peer else None,
                    )
                )
            if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return _error(401, "Incorrect API key provided", "invalid_api_key")
            fault = self.fault if request.path in self.fault_on else None
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.status is not None:
                    return _error(fault.status, fault.message, fault.error_type)
                if fault.non_json:
                    return web.Response(
                        status=200,
                        body=b"<html><body>502 Bad Gateway</body></html>",
                        content_type="text/html",
                    )
            if request.method == "POST":
                model = body.get("model")
                if model not in self.models:
                    return _error(404, f"The model `{model}` does not exist.", "NotFoundError", param="model")
            return await handler(request, body)

        return wrapped

    def _length(self, body: dict[str, Any]) -> tuple[int, str]:
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if isinstance(limit, int) and limit < self.chunks:
            return max(limit, 0), "length"
        return self.chunks, "stop"

    async def _send(self, request: web.Request, payload: bytes) -> web.StreamResponse:
        fault = self.fault if request.path in self.fault_on else None
        if fault is not None and fault.body is not None:
            payload = fault.body
        if fault is not None and fault.huge is not None:
            return await self._send_huge(request, fault)
        if fault is not None and fault.drip is not None:
            resp = web.StreamResponse(headers={"Content-Type": _JSON, "Content-Length": str(len(payload))})
            await resp.prepare(request)
            await _drip(resp, payload, fault.drip)
            return resp
        if fault is not None and fault.cut_after is not None:
            # Promise the whole body, send half, hang up: the client sees a truncated answer.
            resp = web.StreamResponse(headers={"Content-Type": _JSON, "Content-Length": str(len(payload))})
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            _hang_up(request)
            return resp
        return web.Response(body=payload, content_type=_JSON)

    async def _send_huge(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        size = fault.huge or 0
        head = b'{"id":"chatcmpl-huge","object":"chat.completion","created":1700000000,"model":"m",' \
               b'"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"'
        tail = b'"}}]}'
        headers = {"Content-Type": _JSON}
        if fault.announce_length:
            headers["Content-Length"] = str(size)
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        try:
            await resp.write(head)
            await _write_padding(resp, size - len(head) - len(tail))
            await resp.write(tail)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            self.disconnected.set()
            raise
        return resp

    async def _stream(self, request: web.Request, events: Sequence[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        fault = self.fault if request.path in self.fault_on else None
        cut_after = fault.cut_after if fault is not None else None
        if fault is not None and fault.events is not None:
            events = fault.events
        delay = self.chunk_delay
        try:
            for i, event in enumerate(events):
                if cut_after is not None and i >= cut_after:
                    _hang_up(request)
                    return resp
                if fault is not None and fault.huge is not None and i == 1:
                    await resp.write(b'data: {"id":"chatcmpl-fake","choices":[{"index":0,"delta":{"content":"')
                    await _write_padding(resp, fault.huge)
                    await resp.write(b'"}}]}\n\n')
                if fault is not None and fault.drip is not None and i >= fault.drip_after:
                    await _drip(resp, b"".join(events[i:]), fault.drip)
                    break
                await resp.write(event)
                if delay:
                    await asyncio.sleep(delay)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            self.disconnected.set()
            raise
        return resp

    # -- routes -------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"{}", content_type=_JSON)

    async def _models(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        data = [
            {"id": m, "object": "model", "created": _CREATED, "owned_by": "fake", "max_model_len": 4096}
            for m in self.models
        ]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type=_JSON)

    async def _chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        n, finish = self._length(body)
        model = body["model"]
        prompt_tokens = _count_words(body.get("messages"))
        text = self.reply(body) if self.reply is not None else None
        if text is not None:
            return await self._chat_text(request, body, text, prompt_tokens)
        if body.get("stream"):
            events = list(_chat_events(model, n, finish))
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                events.append(_chat_usage_event(model, prompt_tokens, n))
            if self.unique_ids:
                fresh = _fresh_id()
                events = [event.replace(_CHAT_ID, fresh) for event in events]
            return await self._stream(request, events)
        answer = _chat_answer(model, n, finish, prompt_tokens)
        if self.unique_ids:
            answer = answer.replace(_CHAT_ID, _fresh_id())
        return await self._send(request, answer)

    async def _chat_text(
        self, request: web.Request, body: dict[str, Any], text: str, prompt_tokens: int
    ) -> web.StreamResponse:
        """An answer of ``text`` (not cached: it depends on the request)."""
        model = body["model"]
        pieces = re.findall(r"\S*\s*", text)[:-1] or [""]
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": _CREATED, "model": model}
        if body.get("stream"):
            events = [_sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}]})]
            events += [_sse({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                       for piece in pieces]
            events.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            return await self._stream(request, events)
        answer = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": _usage(prompt_tokens, len(pieces)),
        }
        return await self._send(request, orjson.dumps(answer))

    async def _completions(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        n, finish = self._length(body)
        model = body["model"]
        prompt_tokens = _count_words(body.get("prompt"))
        if body.get("stream"):
            events = list(_completion_events(model, n, finish))
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                events.append(_completion_usage_event(model, prompt_tokens, n))
            return await self._stream(request, events)
        return await self._send(request, _completion_answer(model, n, finish, prompt_tokens))

    async def _embeddings(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return _error(
                400, "'input' must be a string or a non-empty list", "invalid_request_error", "input"
            )
        as_base64 = body.get("encoding_format") == "base64"
        dimensions = body.get("dimensions")
        dim = dimensions if isinstance(dimensions, int) and dimensions > 0 else self.embedding_dim
        data = []
        for i, text in enumerate(inputs):
            vector = _vector(str(text), dim)
            encoded: Any = (
                base64.b64encode(array.array("f", vector).tobytes()).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = _count_words(inputs)
        answer = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return await self._send(request, orjson.dumps(answer))


def llama_guard(unsafe: Mapping[str, str], *, answer: str | None = None) -> Reply:
    """A :data:`Reply` that answers Llama Guard prompts as Llama Guard 3 does.

    ``unsafe`` maps a word to the categories it violates (``{"bomb": "S1,S9"}``): when the last
    turn of the prompt's conversation holds the word, the answer is ``unsafe\nS1,S9``, else
    ``safe``. Categories absent from the prompt (excluded by the caller) are left out of the
    answer, as the model would not name them. ``answer`` is the text of every other chat.
    """

    def reply(body: dict[str, Any]) -> str | None:
        messages = body.get("messages")
        prompt = messages[-1].get("content") if isinstance(messages, list) and messages else None
        if not isinstance(prompt, str) or "<BEGIN CONVERSATION>" not in prompt:
            return answer
        conversation = prompt.split("<BEGIN CONVERSATION>", 1)[1].split("<END CONVERSATION>", 1)[0]
        last = conversation.strip().split("\n\n")[-1].lower()
        offered = set(re.findall(r"^(S\d+):", prompt, re.MULTILINE))
        codes: list[str] = []
        for word, categories in unsafe.items():
            if word.lower() in last:
                codes += [c for c in categories.split(",") if c in offered and c not in codes]
        return "unsafe\n" + ",".join(codes) if codes else "safe"

    return reply


# -- wire format: built once per (model, length) --------------------------------------------------


_CHAT_ID = b'"chatcmpl-fake"'
_ids = itertools.count(1)


def _fresh_id() -> bytes:
    # Cached events are patched with bytes.replace: cheaper than serialising them again.
    return b'"chatcmpl-%016x"' % next(_ids)


def _error(status: int, message: str, error_type: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": status}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON)


async def _write_padding(resp: web.StreamResponse, size: int) -> None:
    piece = b"x" * 65536
    while size > 0:
        await resp.write(piece[:size])  # waits for the client to read: nothing piles up here
        size -= len(piece)


async def _drip(resp: web.StreamResponse, payload: bytes, every: float) -> None:
    for i in range(len(payload)):
        await resp.write(payload[i : i + 1])
        await asyncio.sleep(every)


def _hang_up(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _count_words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    if isinstance(value, dict):
        return _count_words(value.get("content", value.get("text")))
    return 0


def _token(i: int) -> str:
    return f"tok{i} "


def _vector(text: str, dim: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % len(digest)] - 128) / 128.0 for i in range(dim)]


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@functools.lru_cache(maxsize=256)
def _chat_events(model: str, n: int, finish: str) -> tuple[bytes, ...]:
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": _CREATED, "model": model}
    first = {
        **base,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    }
    events = [_sse(first)]
    for i in range(n):
        choice = {"index": 0, "delta": {"content": _token(i)}, "finish_reason": None}
        events.append(_sse({**base, "choices": [choice]}))
    events.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    return tuple(events)


@functools.lru_cache(maxsize=256)
def _chat_usage_event(model: str, prompt: int, completion: int) -> bytes:
    return _sse(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "choices": [],
            "usage": _usage(prompt, completion),
        }
    )


@functools.lru_cache(maxsize=256)
def _chat_answer(model: str, n: int, finish: str, prompt: int) -> bytes:
    message = {"role": "assistant", "content": "".join(_token(i) for i in range(n))}
    return orjson.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": _CREATED,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(prompt, n),
        }
    )


@functools.lru_cache(maxsize=256)
def _completion_events(model: str, n: int, finish: str) -> tuple[bytes, ...]:
    base = {"id": "cmpl-fake", "object": "text_completion", "created": _CREATED, "model": model}
    events = []
    for i in range(n):
        choice = {"index": 0, "text": _token(i), "logprobs": None, "finish_reason": None}
        events.append(_sse({**base, "choices": [choice]}))
    events.append(
        _sse({**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}]})
    )
    return tuple(events)


@functools.lru_cache(maxsize=256)
def _completion_usage_event(model: str, prompt: int, completion: int) -> bytes:
    return _sse(
        {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": _CREATED,
            "model": model,
            "choices": [],
            "usage": _usage(prompt, completion),
        }
    )


@functools.lru_cache(maxsize=256)
def _completion_answer(model: str, n: int, finish: str, prompt: int) -> bytes:
    text = "".join(_token(i) for i in range(n))
    return orjson.dumps(
        {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": _CREATED,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(prompt, n),
        }
    )


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# -- as a process -----------------------------------------------------------------------------------


def _interval(text: str) -> float:
    """``3ms``, ``0.003s`` or ``0.003`` (seconds) as seconds."""
    scale = 1.0
    number = text.strip()
    if number.endswith("ms"):
        number, scale = number[:-2], 0.001
    elif number.endswith("s"):
        number = number[:-1]
    try:
        seconds = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 3ms or 0.003s") from None
    if not 0 <= seconds <= 60:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range; use 0 to 60 s")
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stackd.testing.fake_openai", description="A fast fake OpenAI-compatible server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    parser.add_argument("--chunks", type=int, default=16, help="content tokens per answer / stream events")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream events")
    parser.add_argument("--token-interval", type=_interval, default=None, metavar="DURATION",
                        help="time between stream events, e.g. 3ms or 0.003s (as a model emits tokens; "
                             "overrides --chunk-delay)")
    parser.add_argument("--models", default="fake-model", help="comma-separated model ids to serve")
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--record", action="store_true", help="keep request bodies in memory (tests only)")
    parser.add_argument("--unique-ids", action="store_true", help="a fresh chat completion id per answer")
    args = parser.parse_args(argv)
    fake = FakeOpenAI(
        models=tuple(m for m in args.models.split(",") if m),
        chunks=args.chunks,
        chunk_delay=args.chunk_delay if args.token_interval is None else args.token_interval,
        embedding_dim=args.embedding_dim,
        api_key=args.api_key,
        record=args.record,
        unique_ids=args.unique_ids,
        host=args.host,
        port=args.port,
    )

    async def serve() -> None:
        async with fake:
            # One line a driver can wait for and parse.
            print(f"fake_openai listening on {fake.url}", flush=True)
            await asyncio.Event().wait()

    try:
        import uvloop  # the benchmark upstream should be as cheap as a real fast server

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
