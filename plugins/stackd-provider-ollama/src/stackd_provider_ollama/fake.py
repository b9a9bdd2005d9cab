"""A small aiohttp server that speaks Ollama's documented native API, for tests and demos.

It answers ``GET /api/version``, ``GET /api/tags``, ``POST /api/show``, ``POST /api/chat``,
``POST /api/generate`` and ``POST /api/embed`` with Ollama's shapes: NDJSON streams
(``application/x-ndjson``) of objects with ``done: false`` and one last ``done: true`` object
carrying ``done_reason``, ``prompt_eval_count``, ``eval_count`` and durations in nanoseconds;
errors as ``{"error": "..."}`` with Ollama's statuses (400 bad input, 404
``model 'x' not found``).

The "model" answers deterministically: ``reply`` split into word tokens, cut at
``options.num_predict`` (then ``done_reason`` is ``length``); a prompt token is a
whitespace-separated word. Knobs make it misbehave the ways a real server can: a slow first
byte, a stream cut mid-answer, an ``{"error"}`` line mid-stream, a canned answer for one path.
It records every request body and counts clients that went away mid-stream.

Use it as ``async with FakeOllama() as fake: ... fake.url ...`` or run
``python -m stackd_provider_ollama.fake --port 11434``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson
from aiohttp import web

__all__ = ["FakeModel", "FakeOllama", "main"]

_NDJSON = "application/x-ndjson"


@attrs.define
class FakeModel:
    """One pulled model. ``dims`` makes it an embedding model."""

    name: str
    dims: int | None = None
    capabilities: tuple[str, ...] = ("completion", "tools", "vision")

    def __attrs_post_init__(self) -> None:
        if self.dims is not None:
            self.capabilities = ("embedding",)


def _canonical(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _tokens(text: str) -> list[str]:
    """Split like a tokenizer that keeps leading spaces: "a b" -> ["a", " b"]."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]


def _count(text: str) -> int:
    return len(text.split())


@attrs.define
class FakeOllama:
    models: list[FakeModel] = attrs.field(
        factory=lambda: [FakeModel("llama3.2:latest"), FakeModel("all-minilm:latest", dims=8)]
    )
    reply: str = "The sky is blue because of Rayleigh scattering."
    # When set and the request carries tools, chat answers with these Ollama tool calls.
    tool_calls: list[dict[str, Any]] | None = None
    thinking: str | None = None
    version: str = "0.12.6"
    # Misbehaviour knobs.
    delay: float = 0.0  # seconds before the status line (slow model load)
    chunk_delay: float = 0.0  # seconds between stream lines
    cut_after: int | None = None  # stream: drop the connection after this many lines
    end_early_after: int | None = None  # stream: end the body cleanly after this many lines, no done object
    error_after: int | None = None  # stream: send {"error": error_message} after this many lines
    error_message: str = "an error was encountered while running the model"
    host: str = "127.0.0.1"
    port: int = 0
    # Records.
    requests: list[tuple[str, Any]] = attrs.field(factory=list)
    peers: list[Any] = attrs.field(factory=list)  # client (host, port) per request: shows connection reuse
    disconnects: int = 0
    _canned: dict[str, tuple[int, bytes, str]] = attrs.field(factory=dict, init=False)
    _disconnected: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _runner: web.AppRunner | None = attrs.field(default=None, init=False)

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/embed", self._embed)
        app.router.add_get("/", self._root)
        return app

    async def start(self) -> FakeOllama:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        # Port 0 means "any free port": ask the listening socket which one it got.
        sockets = getattr(site._server, "sockets", None)
        assert sockets
        self.port = int(sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOllama:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- test helpers -------------------------------------------------------------------------

    def answer_once(
        self, path: str, status: int, body: bytes, content_type: str = "application/json"
    ) -> None:
        """Answer the next request to ``path`` with exactly this, whatever it asks."""
        self._canned[path] = (status, body, content_type)

    async def wait_disconnect(self, within: float = 5.0) -> None:
        """Until a client has gone away mid-stream (raises TimeoutError after ``within`` s)."""
        await asyncio.wait_for(self._disconnected.wait(), within)

    def bodies(self, path: str) -> list[Any]:
        return [body for p, body in self.requests if p == path]

    # --- request plumbing ---------------------------------------------------------------------

    def _find(self, name: str) -> FakeModel | None:
        wanted = _canonical(name)
        return next((m for m in self.models if _canonical(m.name) == wanted), None)

    async def _read(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            self.requests.append((request.path, raw))
            return None, _error(400, f"invalid character in request body: {exc}")
        self.requests.append((request.path, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path in self._canned:
            status, data, ctype = self._canned.pop(request.path)
            return None, web.Response(body=data, status=status, content_type=ctype)
        if body is None:
            return None, _error(400, "missing request body")
        if not isinstance(body, dict):
            return None, _error(400, "json: cannot unmarshal array into Go value of type api.Request")
        return body, None

    def _model_or_error(
        self, body: Mapping[str, Any], capability: str
    ) -> tuple[FakeModel | None, web.Response | None]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return None, _error(400, "model is required")
        model = self._find(name)
        if model is None:
            return None, _error(404, f"model '{name}' not found")
        if capability not in model.capabilities:
            return None, _error(400, f"{name!r} does not support {capability}".replace("'", '"'))
        return model, None

    def _answer_tokens(self, body: Mapping[str, Any]) -> tuple[list[str], str]:
        text = self.reply
        fmt = body.get("format")
        if fmt == "json" or isinstance(fmt, dict):
            text = orjson.dumps({"answer": self.reply}).decode()
            tokens = [text]
        else:
            tokens = _tokens(text)
        options = body.get("options") or {}
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(tokens):
            return tokens[:limit], "length"
        return tokens, "stop"

    def _metrics(self, prompt_tokens: int, eval_tokens: int) -> dict[str, Any]:
        return {
            "total_duration": 1_000_000 * (eval_tokens + 1),
            "load_duration": 100_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 10_000 * prompt_tokens,
            "eval_count": eval_tokens,
            "eval_duration": 900_000 * eval_tokens,
        }

    async def _stream(self, request: web.Request, lines: list[dict[str, Any]]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": _NDJSON})
        await resp.prepare(request)
        try:
            for i, line in enumerate(lines):
                if self.cut_after is not None and i == self.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return resp
                if self.end_early_after is not None and i == self.end_early_after:
                    break
                if self.error_after is not None and i == self.error_after:
                    await resp.write(orjson.dumps({"error": self.error_message}) + b"\n")
                    break
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                if request.transport is None or request.transport.is_closing():
                    raise ConnectionResetError("client went away")
                await resp.write(orjson.dumps(line) + b"\n")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1
            self._disconnected.set()
            raise
        return resp

    # --- routes ---------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        return _json({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, None))
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path in self._canned:
            status, data, ctype = self._canned.pop(request.path)
            return web.Response(body=data, status=status, content_type=ctype)
        models = []
        for m in self.models:
            name = _canonical(m.name)
            family = "bert" if m.dims else "llama"
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-05-04T17:37:44.706015396-07:00",
                    "size": 2019393189,
                    "digest": hashlib.sha256(name.encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": family,
                        "families": [family],
                        "parameter_size": "23M" if m.dims else "3.2B",
                        "quantization_level": "F16" if m.dims else "Q4_K_M",
                    },
                }
            )
        return _json({"models": models})

    async def _show(self, request: web.Request) -> web.Response:
        body, err = await self._read(request)
        if err is not None:
            return err
        assert body is not None
        name = body.get("model") or body.get("name")
        model = self._find(name) if isinstance(name, str) else None
        if model is None:
            return _error(404, f"model '{name}' not found")
        arch = "bert" if model.dims else "llama"
        info: dict[str, Any] = {"general.architecture": arch, f"{arch}.context_length": 8192}
        if model.dims:
            info[f"{arch}.embedding_length"] = model.dims
        return _json(
            {
                "modelfile": f"FROM {model.name}",
                "parameters": "",
                "template": "{{ .Prompt }}",
                "details": {"format": "gguf", "family": arch},
                "model_info": info,
                "capabilities": list(model.capabilities),
            }
        )

    def _check_images(self, images: Any) -> str | None:
        if images is None:
            return None
        if not isinstance(images, list):
            return "json: cannot unmarshal images into Go value of type []api.ImageData"
        for image in images:
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, TypeError, ValueError):
                return "illegal base64 data at input byte 0"
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, err = await self._read(request)
        if err is not None:
            return err
        assert body is not None
        model, err = self._model_or_error(body, "completion")
        if err is not None:
            return err
        assert model is not None
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            return _error(400, "json: cannot unmarshal messages into Go value of type []api.Message")
        prompt_tokens = 0
        for msg in messages:
            if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant", "tool"):
                return _error(400, "invalid message role")
            problem = self._check_images(msg.get("images"))
            if problem:
                return _error(400, problem)
            prompt_tokens += _count(str(msg.get("content") or ""))
        fmt = body.get("format")
        if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
            return _error(
                400, f'invalid format: {orjson.dumps(fmt).decode()}; expected "json" or a valid JSON schema'
            )
        name = body["model"]
        use_tools = bool(body.get("tools")) and self.tool_calls is not None
        tokens: list[str]
        if use_tools:
            tokens, reason = [], "stop"
        else:
            tokens, reason = self._answer_tokens(body)
        eval_tokens = len(tokens) + (len(self.tool_calls or []) if use_tools else 0)
        final = {
            "model": name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": reason,
            "done": True,
            **self._metrics(prompt_tokens, eval_tokens),
        }
        if not body.get("stream", True):
            message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
            if self.thinking:
                message["thinking"] = self.thinking
            if use_tools:
                message["tool_calls"] = self.tool_calls
            final["message"] = message
            return _json(final)
        lines: list[dict[str, Any]] = []
        if self.thinking:
            lines.append(
                self._chat_line(name, {"role": "assistant", "content": "", "thinking": self.thinking})
            )
        lines += [self._chat_line(name, {"role": "assistant", "content": t}) for t in tokens]
        if use_tools:
            lines.append(
                self._chat_line(name, {"role": "assistant", "content": "", "tool_calls": self.tool_calls})
            )
        lines.append(final)
        return await self._stream(request, lines)

    @staticmethod
    def _chat_line(name: str, message: dict[str, Any]) -> dict[str, Any]:
        return {"model": name, "created_at": _now(), "message": message, "done": False}

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body, err = await self._read(request)
        if err is not None:
            return err
        assert body is not None
        _, err = self._model_or_error(body, "completion")
        if err is not None:
            return err
        name = body["model"]
        if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            return _error(400, "raw mode does not support template, system, or context")
        problem = self._check_images(body.get("images"))
        if problem:
            return _error(400, problem)
        prompt = body.get("prompt") or ""
        if not prompt:
            # An empty prompt only loads (or, with keep_alive 0, unloads) the model.
            reason = "unload" if body.get("keep_alive") in (0, "0") else "load"
            return _json(
                {"model": name, "created_at": _now(), "response": "", "done": True, "done_reason": reason}
            )
        tokens, reason = self._answer_tokens(body)
        final: dict[str, Any] = {
            "model": name,
            "created_at": _now(),
            "response": "",
            "done": True,
            "done_reason": reason,
            **self._metrics(_count(prompt), len(tokens)),
        }
        if not body.get("raw"):
            final["context"] = [1, 2, 3]
        if not body.get("stream", True):
            final["response"] = "".join(tokens)
            return _json(final)
        lines = [{"model": name, "created_at": _now(), "response": t, "done": False} for t in tokens]
        lines.append(final)
        return await self._stream(request, lines)

    async def _embed(self, request: web.Request) -> web.Response:
        body, err = await self._read(request)
        if err is not None:
            return err
        assert body is not None
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        inp = body.get("input")
        if isinstance(inp, str):
            texts = [inp] if inp else []
        elif isinstance(inp, list) and all(isinstance(t, str) for t in inp):
            texts = list(inp)
        elif inp is None:
            texts = []
        else:
            return _error(400, "invalid input type")
        model = self._find(name)
        if model is None:
            return _error(404, f"model '{name}' not found")
        dims = model.dims or 16
        wanted = body.get("dimensions")
        if isinstance(wanted, int) and 0 < wanted < dims:
            dims = wanted
        vectors = [self._vector(text, dims) for text in texts]
        return _json(
            {
                "model": name,
                "embeddings": vectors,
                "total_duration": 14143917,
                "load_duration": 1019500,
                "prompt_eval_count": sum(_count(t) for t in texts),
            }
        )

    @staticmethod
    def _vector(text: str, dims: int) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dims)]
        norm = math.sqrt(sum(v * v for v in raw)) or 1.0
        return [v / norm for v in raw]


def _parse_model(spec: str) -> FakeModel:
    name, _, dims = spec.partition("=")
    return FakeModel(name, dims=int(dims) if dims else None)


async def _serve(fake: FakeOllama) -> None:
    async with fake:
        print(f"fake ollama listening on {fake.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stackd_provider_ollama.fake", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME[=DIMS]",
        help="a pulled model; NAME=DIMS makes an embedding model "
        "(repeatable; default llama3.2:latest, all-minilm=8)",
    )
    parser.add_argument("--reply", default=None, help="the text every completion answers")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream lines")
    args = parser.parse_args(argv)
    fake = FakeOllama(host=args.host, port=args.port, chunk_delay=args.chunk_delay)
    if args.model:
        fake.models = [_parse_model(m) for m in args.model]
    if args.reply is not None:
        fake.reply = args.reply
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(fake))


if __name__ == "__main__":
    main()
