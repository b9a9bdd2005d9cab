"""A hostile client against the real server: malformed JSON, type confusion, bad headers and paths,
floods, and streams that are abandoned. The server answers the one error shape (API.md §3), never
a 500 or a traceback, never a secret, and keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient

from stackd.loading import LoadedConfig
from stackd.testing.fake_openai import FakeOpenAI

Client = TestClient[Any, Any]

MSGS = [{"role": "user", "content": "hi"}]
CHAT = {"model": "echo-1", "messages": MSGS}
OPENAI_POST = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
               "/v1/openai/v1/chat/completions", "/v1/openai/v1/completions", "/v1/openai/v1/embeddings"]
NATIVE_POST = ["/v1/inference/chat-completion", "/v1/inference/completion", "/v1/inference/embeddings",
               "/v1/safety/run-shield", "/v1/models"]
ALL_POST = OPENAI_POST + NATIVE_POST
PD_SECRET = "pd-secret-token-5150"


def assert_error(body: Any, status: int) -> None:
    assert isinstance(body, dict) and set(body) <= {"error", "errors"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert isinstance(body["error"]["type"], str) and body["error"]["type"], body
    if status == 400:
        assert body["errors"] and all(e["loc"].startswith("$") and e["msg"] for e in body["errors"]), body


async def _check(resp: Any, expect: int | tuple[int, ...]) -> dict[str, Any]:
    text = await resp.text()
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    assert resp.status in ((expect,) if isinstance(expect, int) else expect), (resp.status, text[:500])
    body: dict[str, Any] = orjson.loads(text)
    if resp.status >= 400:
        assert_error(body, resp.status)
    return body


async def _raw(port: int, data: bytes, wait: float = 3.0) -> bytes:
    """Send bytes as they are and read the answer (no client library to tidy them up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), wait)
    finally:
        writer.close()
        await writer.wait_closed()


def _split(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)


def _post(path: str, body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture
async def big(serve_app: Any, write_config: Callable[..., Path]) -> AsyncIterator[Client]:
    """The echo app with a 12 MB body limit (the default is smaller than a 10 MB string)."""
    server = await serve_app(write_config(server="  max_body_bytes: 12000000\n"))
    async with TestClient(server) as c:
        yield c


# ---- JSON edge cases -----------------------------------------------------------------------

BAD_JSON = {
    "nested arrays": b"[" * 10_000 + b"]" * 10_000,
    "nested objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "1e400": b'{"model": 1e400, "model_id": -1e400}',
    "NaN": b'{"model": NaN}',
    "Infinity": b'{"model": "echo-1", "temperature": Infinity}',
    "invalid utf-8": b'{"model": "\xff\xfe"}',
    "lone surrogate": b'{"model": "\\ud800"}',
    "BOM": b'\xef\xbb\xbf{"model": "echo-1"}',
    "empty": b"",
    "null": b"null",
    "truncated": b'{"model": "echo-1", "messages": [',
}


@pytest.mark.parametrize("name", list(BAD_JSON))
async def test_bad_json_is_400_on_every_route(client: Client, name: str) -> None:
    for path in ALL_POST:
        resp = await client.post(path, data=BAD_JSON[name], headers={"Content-Type": "application/json"})
        body = await _check(resp, 400)
        assert [e["loc"] for e in body["errors"]] == ["$"], (path, body)


async def test_huge_integers_and_counts(client: Client) -> None:
    # 2**70 does not fit 64 bits: orjson reads it as a float, so it is not an integer count.
    resp = await client.post("/v1/chat/completions", data=b'{"model": "echo-1", "messages": [{"role": "user", '
                             b'"content": "a b c"}], "max_tokens": %d}' % 2**70,
                             headers={"Content-Type": "application/json"})
    assert "$.max_tokens" in [e["loc"] for e in (await _check(resp, 400))["errors"]]
    # The largest unsigned 64-bit count is an integer, and a count larger than the answer is harmless.
    resp = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2**64 - 1})
    await _check(resp, 200)
    resp = await client.post("/v1/inference/chat-completion",
                             json={"model_id": "echo-1", "messages": MSGS, "sampling_params": {"max_tokens": 2**63}})
    await _check(resp, 200)


async def test_duplicate_keys_and_nul_characters(client: Client) -> None:
    # Duplicate keys: the last one wins, as in every JSON parser the clients use.
    resp = await client.post("/v1/chat/completions", data=b'{"model": "nope", "model": "echo-1", '
                             b'"messages": [{"role": "user", "content": "one"}]}',
                             headers={"Content-Type": "application/json"})
    assert (await _check(resp, 200))["choices"][0]["message"]["content"] == "one"
    # NUL inside content goes through (and into the sqlite store); inside an id it is just an unknown id.
    resp = await client.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": "a\x00b"}]})
    assert (await _check(resp, 200))["choices"][0]["message"]["content"] == "a\x00b"
    for path, body in [("/v1/chat/completions", {**CHAT, "model": "echo-1\x00"}),
                       ("/v1/inference/chat-completion", {"model_id": "\x00", "messages": MSGS}),
                       ("/v1/inference/embeddings", {"model_id": "echo-embed\x00", "contents": ["x"]})]:
        await _check(await client.post(path, json=body), 404)


async def test_ten_megabyte_string(big: Client) -> None:
    text = "w" * 10_000_000

    async def post(path: str, body: dict[str, Any]) -> Any:
        # A BytesIO body: aiohttp warns about (and this file's warnings are errors) large raw bytes.
        return await big.post(path, data=io.BytesIO(orjson.dumps(body)), headers={"Content-Type": "application/json"})

    resp = await post("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": text}]})
    assert len((await _check(resp, 200))["choices"][0]["message"]["content"]) == len(text)
    resp = await post("/v1/inference/completion", {"model_id": "echo-1", "content": text})
    assert len((await _check(resp, 200))["content"]) == len(text)
    resp = await post("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": text * 2}]})
    await _check(resp, 413)


async def test_a_body_must_be_declared_json(client: Client) -> None:
    # Types a browser page may send without a preflight are refused (more in test_request_inputs).
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        resp = await client.post("/v1/chat/completions", data=orjson.dumps(CHAT), headers={"Content-Type": ctype})
        await _check(resp, 415)
    resp = await client.post("/v1/chat/completions", data=b"model=echo-1",
                             headers={"Content-Type": "application/json"})
    await _check(resp, 400)


# ---- body sizes and encodings --------------------------------------------------------------


async def test_declared_length_over_the_limit_is_413_without_waiting(serve_app: Any, echo_config: Path) -> None:
    server = await serve_app(echo_config)
    for path in ("/v1/chat/completions", "/v1/inference/chat-completion", "/v1/models"):
        # The client announces 10 GB and sends 40 bytes: the answer comes now, not when a read times out.
        request = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                   b"Content-Length: 10000000000\r\n\r\n" + orjson.dumps(CHAT)[:40])
        status, body = _split(await _raw(server.port, request, wait=2.0))
        assert status == 413
        assert_error(body, 413)
        assert "max_body_bytes" in body["error"]["message"]


async def test_gzip_bodies(serve_app: Any, write_config: Callable[..., Path]) -> None:
    server = await serve_app(write_config(server="  max_body_bytes: 100000\n"))
    ok = gzip.compress(orjson.dumps(CHAT))
    status, body = _split(await _raw(server.port, _post("/v1/chat/completions", ok, b"Content-Encoding: gzip")))
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi"
    # 48 KB on the wire that inflate to 50 MB: refused at the limit, counted after decompression.
    bomb = gzip.compress(orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "a" * 50_000_000}]}))
    assert len(bomb) < 100_000
    for path in ("/v1/chat/completions", "/v1/inference/chat-completion"):
        status, body = _split(await _raw(server.port, _post(path, bomb, b"Content-Encoding: gzip")))
        assert status == 413, body
        assert_error(body, 413)
    # A body that is not gzip at all, sent as gzip: the client's mistake, a 400.
    for path in ("/v1/chat/completions", "/v1/inference/embeddings", "/v1/models"):
        status, body = _split(await _raw(server.port, _post(path, orjson.dumps(CHAT), b"Content-Encoding: gzip")))
        assert status == 400, body
        assert_error(body, 400)
        assert "Content-Encoding" in body["error"]["message"]


async def test_chunked_body_over_the_limit(serve_app: Any, write_config: Callable[..., Path]) -> None:
    server = await serve_app(write_config(server="  max_body_bytes: 4096\n"))
    async with TestClient(server) as c:
        for path in ("/v1/chat/completions", "/v1/inference/completion", "/v1/embeddings"):
            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"model": "echo-1", "content": "'
                for _ in range(100):
                    yield b"z" * 1000
                yield b'"}'

            resp = await c.post(path, data=chunks(), headers={"Content-Type": "application/json"})
            await _check(resp, 413)
        await _check(await c.post("/v1/chat/completions", json=CHAT), 200)


# ---- type confusion ------------------------------------------------------------------------

# Dimensions past the model's stay small here: before the check, the echo provider built vectors that
# long, and 2**40 of them exhaust the machine rather than fail the test.
NATIVE_CONFUSION: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/inference/chat-completion", {"model_id": ["echo-1"], "messages": MSGS}, "$.model_id"),
    ("/v1/inference/chat-completion", {"model_id": {"id": "echo-1"}, "messages": MSGS}, "$.model_id"),
    ("/v1/inference/chat-completion", {"model_id": 7, "messages": MSGS}, "$.model_id"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": ["hi"]}, "$.messages[0]"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": [None]}, "$.messages[0]"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": [[MSGS]]}, "$.messages[0]"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS, "stream": 1}, "$.stream"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS, "stream": "maybe"}, "$.stream"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": [
        {"role": "user", "content": [{"type": "video", "video": "x"}]}]}, "$.messages[0].content"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": [
        {"role": "user", "content": [{"type": "image", "image": {"data": "!!!not base64"}}]}]}, "$.messages[0]"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": [
        {"role": "user", "content": [{"type": "image", "image": {}}]}]}, "$.messages[0]"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS, "tools": "x"}, "$.tools"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS, "tools": [{"tool_name": 3}]},
     "$.tools[0]"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS,
                                       "tools": [{"tool_name": "t", "parameters": [1]}]}, "$.tools[0]"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS,
                                       "tools": [{"tool_name": "t", "parameters": {"a": {"param_type": 5}}}]},
     "$.tools[0]"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS, "tools": [{"tool_name": "t"}],
                                       "tool_choice": "other"}, "$.tool_choice"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS,
                                       "sampling_params": {"strategy": {"type": "bogus"}}}, "$.sampling_params"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS,
                                       "sampling_params": {"strategy": []}}, "$.sampling_params"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS,
                                       "sampling_params": {"strategy": {"type": "top_k"}}}, "$.sampling_params"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS, "sampling_params": {
        "strategy": {"type": "top_p", "temperature": "nan"}}}, "$.sampling_params.strategy.temperature"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS, "sampling_params": {
        "strategy": {"type": "top_k", "top_k": -5}}}, "$.sampling_params.strategy.top_k"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS,
                                       "sampling_params": {"max_tokens": -1}}, "$.sampling_params.max_tokens"),
    ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS,
                                       "sampling_params": {"repetition_penalty": "inf"}},
     "$.sampling_params.repetition_penalty"),
    ("/v1/inference/completion", {"model_id": "echo-1", "content": [1]}, "$.content"),
    ("/v1/inference/completion", {"model_id": "echo-1", "content": "x", "stream": [True]}, "$.stream"),
    ("/v1/inference/embeddings", {"model_id": "echo-embed", "contents": [[1]]}, "$.contents"),
    ("/v1/inference/embeddings", {"model_id": "echo-embed", "contents": ["x"], "output_dimension": -3},
     "$.output_dimension"),
    ("/v1/inference/embeddings", {"model_id": "echo-embed", "contents": ["x"], "output_dimension": 9},
     "$.output_dimension"),
    ("/v1/safety/run-shield", {"shield_id": ["s"], "messages": MSGS}, "$.shield_id"),
    ("/v1/safety/run-shield", {"shield_id": "s", "messages": [1]}, "$.messages[0]"),
    ("/v1/models", {"model_id": {"a": 1}}, "$.model_id"),
    ("/v1/models", {"model_id": "m", "provider_id": ["echo"]}, "$.provider_id"),
]

OPENAI_CONFUSION: list[tuple[str, dict[str, Any], str]] = [
    ("chat/completions", {"model": ["echo-1"], "messages": MSGS}, "$.model"),
    ("chat/completions", {"model": {"id": "echo-1"}, "messages": MSGS}, "$.model"),
    ("chat/completions", {"model": 1.5, "messages": MSGS}, "$.model"),
    ("chat/completions", {"model": "echo-1", "messages": ["hi"]}, "$.messages[0]"),
    ("chat/completions", {"model": "echo-1", "messages": [None, [MSGS]]}, "$.messages[1]"),
    ("chat/completions", {**CHAT, "stream": "true"}, "$.stream"),
    ("chat/completions", {**CHAT, "stream": 1}, "$.stream"),
    ("chat/completions", {**CHAT, "stream": True, "stream_options": [{"include_usage": True}]}, "$.stream_options"),
    ("chat/completions", {**CHAT, "tools": {"type": "function"}}, "$.tools"),
    ("chat/completions", {**CHAT, "max_tokens": 1.0}, "$.max_tokens"),
    ("chat/completions", {**CHAT, "temperature": "hot"}, "$.temperature"),
    ("chat/completions", {**CHAT, "n": True}, "$.n"),
    ("completions", {"model": "echo-1", "prompt": {"text": "x"}}, "$.prompt"),
    ("completions", {"model": ["echo-1"], "prompt": "x"}, "$.model"),
    ("completions", {"model": "echo-1", "prompt": "x", "stop": 5}, "$.stop"),
    ("embeddings", {"model": "echo-embed", "input": 5}, "$.input"),
    ("embeddings", {"model": "echo-embed", "input": "x", "dimensions": "8"}, "$.dimensions"),
    ("embeddings", {"model": "echo-embed", "input": "x", "dimensions": -1}, "$.dimensions"),
    ("embeddings", {"model": "echo-embed", "input": "x", "dimensions": 10**6}, "$.dimensions"),
    ("embeddings", {"model": "echo-1", "input": "x"}, "$.model"),
]


async def test_native_type_confusion_is_400_at_the_field(client: Client) -> None:
    for path, body, loc in NATIVE_CONFUSION:
        resp = await client.post(path, json=body)
        out = await _check(resp, 400)
        assert any(e["loc"].startswith(loc) for e in out["errors"]), (path, body, out)


@pytest.mark.parametrize("prefix", ["/v1", "/v1/openai/v1"])
async def test_openai_type_confusion_is_400_at_the_field(client: Client, prefix: str) -> None:
    for route, body, loc in OPENAI_CONFUSION:
        resp = await client.post(f"{prefix}/{route}", json=body)
        out = await _check(resp, 400)
        assert any(e["loc"].startswith(loc) for e in out["errors"]), (route, body, out)


async def test_odd_but_valid_values_do_not_break_a_provider(client: Client) -> None:
    # What the server passes through untouched reaches the provider, which answers or refuses in shape.
    for path, body in [
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "weird"}, 1, None]}]}),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": {"a": 1}}]}),
        ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": [1]}}),
        ("/v1/chat/completions", {**CHAT, "max_tokens": -5, "n": -5}),
        ("/v1/completions", {"model": "echo-1", "prompt": "x", "stream": True, "max_tokens": -1}),
        ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS, "stream": "true"}),
        ("/v1/embeddings", {"model": "echo-embed", "input": "x", "dimensions": 8}),
    ]:
        resp = await client.post(path, json=body)
        text = await resp.text()
        assert resp.status in (200, 400), (path, body, resp.status, text)
        assert "Traceback" not in text and "internal" not in text, text


# ---- headers -------------------------------------------------------------------------------


async def test_malformed_provider_data_never_echoes_the_secret(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for value in [f'{{"token": "{PD_SECRET}"', f'["{PD_SECRET}"]', PD_SECRET, f'"{PD_SECRET}"',
                  orjson.dumps({"token": PD_SECRET, "pad": "p" * 6000}).decode()]:
        for path, body in [("/v1/chat/completions", CHAT),
                           ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS}),
                           ("/v1/embeddings", {"model": "echo-embed", "input": "x"})]:
            resp = await client.post(path, json=body, headers={"X-LlamaStack-Provider-Data": value})
            text = await resp.text()
            assert PD_SECRET not in text
            if value.startswith("{") and value.endswith("}"):
                continue  # a valid object: served
            out = await _check(resp, 400)
            assert out["errors"][0]["loc"] == "$.headers.X-LlamaStack-Provider-Data"
    assert PD_SECRET not in caplog.text


async def test_oversized_header_is_refused_and_never_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # 100 KB is past aiohttp's header limit (8190): its parser refuses the request before any
    # stackd code runs, and its exception quotes the start of the header, the secret included.
    for name in ("X-LlamaStack-Provider-Data", "Authorization"):
        value = (orjson.dumps({"token": PD_SECRET, "pad": "p" * 100_000}).decode() if name != "Authorization"
                 else f"Bearer {PD_SECRET}{'q' * 100_000}")
        resp = await client.post("/v1/chat/completions", json=CHAT, headers={name: value})
        assert resp.status == 400
        await resp.read()
    assert "LineTooLong" in caplog.text and "request bytes not logged" in caplog.text
    assert PD_SECRET not in caplog.text
    await _check(await client.post("/v1/chat/completions", json=CHAT), 200)


async def test_requests_the_parser_refuses(serve_app: Any, echo_config: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = await serve_app(echo_config)
    for request in (
        b"GET /v1/models/" + b"s3cr3t" * 2000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",  # a 12k request line
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: -5\r\n\r\n{}",
        b"BREW /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /v1/models/\xc3\xa9\xff HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ):
        answer = await _raw(server.port, request)
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0], answer[:200]
    assert "s3cr3ts3cr3t" not in caplog.text and "Traceback" not in caplog.text
    async with TestClient(server) as c:
        await _check(await c.post("/v1/chat/completions", json=CHAT), 200)


async def test_non_ascii_header_values(serve_app: Any, echo_config: Path) -> None:
    server = await serve_app(echo_config)
    chat = orjson.dumps(CHAT)
    status, body = _split(await _raw(server.port, _post(
        "/v1/chat/completions", chat, b'X-LlamaStack-Provider-Data: {"echo_suffix": "\xc3\xa9t\xc3\xa9"}')))
    assert status == 200 and body["choices"][0]["message"]["content"] == "hi \u00e9t\u00e9"
    for value in (b'{"echo_suffix": "\xff\xfe"}', b"\x80\x81\x82", b'{"a": "\xc3"}'):
        status, body = _split(await _raw(server.port, _post(
            "/v1/inference/chat-completion", orjson.dumps({"model_id": "echo-1", "messages": MSGS}),
            b"X-LlamaStack-Provider-Data: " + value)))
        assert status == 400, body
        assert_error(body, 400)
    # Latin-1 bytes in an unrelated header are no one's business.
    status, _ = _split(await _raw(server.port, _post("/v1/chat/completions", chat, b"X-Note: caf\xe9")))
    assert status == 200


# ---- paths and methods ---------------------------------------------------------------------


async def test_hostile_model_ids_in_paths(serve_app: Any, echo_config: Path) -> None:
    server = await serve_app(echo_config)
    for raw_id in (b"..", b"../../etc/passwd", b"..%2F..%2Fhealth", b"%2e%2e%2fv1%2fhealth", b"a%00b", b"%00",
                   b"%ff%fe", b"%C3%A9t%C3%A9", b"\xe2\x9c\x93".hex().encode(), b"x" * 4000):
        for method in (b"GET", b"DELETE"):
            for prefix in (b"/v1/models/", b"/v1/openai/v1/models/", b"/v1/shields/"):
                if method == b"DELETE" and prefix == b"/v1/openai/v1/models/":
                    continue
                answer = await _raw(server.port,
                                    method + b" " + prefix + raw_id + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
                status, body = _split(answer)
                assert status == 404, (method, prefix, raw_id, body)
                assert_error(body, 404)
    # The registered models are untouched by the DELETEs above.
    async with TestClient(server) as c:
        ids = {m["identifier"] for m in (await _check(await c.get("/v1/models"), 200))["data"]}
        assert {"echo-1", "echo-embed"} <= ids


async def test_unicode_and_very_long_ids_in_bodies(client: Client) -> None:
    for model in ("\u00e9t\u00e9", "\U0001f600", "x" * 10_000, "../echo-1", "echo-1/../echo-1"):
        resp = await client.post("/v1/chat/completions", json={**CHAT, "model": model})
        out = await _check(resp, 404)
        assert len(out["error"]["message"]) < 20_000
    resp = await client.post("/v1/models", json={"model_id": "x" * 10_000, "provider_id": "echo",
                                                 "provider_model_id": "nope"})
    await _check(resp, 400)  # ids are at most 256 characters


async def test_unknown_methods(client: Client) -> None:
    for method in ("PATCH", "PROPFIND", "OPTIONS", "PUT"):
        for path in ("/v1/chat/completions", "/v1/inference/chat-completion", "/v1/models"):
            resp = await client.request(method, path)
            out = await _check(resp, 405)
            assert method in out["error"]["message"]


# ---- concurrency ---------------------------------------------------------------------------


async def test_two_hundred_mixed_requests(client: Client) -> None:
    good = [("/v1/chat/completions", CHAT, 200),
            ("/v1/openai/v1/chat/completions", {**CHAT, "stream": True}, 200),
            ("/v1/inference/chat-completion", {"model_id": "echo-1", "messages": MSGS}, 200),
            ("/v1/embeddings", {"model": "echo-embed", "input": ["a", "b"]}, 200),
            ("/v1/inference/completion", {"model_id": "echo-1", "content": "a b", "stream": True}, 200)]
    bad: list[tuple[str, Any, int]] = [("/v1/chat/completions", BAD_JSON["nested arrays"], 400),
                                       ("/v1/chat/completions", {**CHAT, "model": "ghost"}, 404),
                                       ("/v1/inference/chat-completion", {"model_id": [1]}, 400),
                                       ("/v1/embeddings", {"model": "echo-embed", "input": "x", "dimensions": 10**6},
                                        400),
                                       ("/v1/completions", BAD_JSON["invalid utf-8"], 400)]
    plan = [(good + bad)[i % 10] for i in range(200)]

    async def one(path: str, body: Any, expect: int) -> tuple[int, int, bytes]:
        if isinstance(body, bytes):
            resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
        else:
            resp = await client.post(path, json=body)
        return resp.status, expect, await resp.read()

    results = await asyncio.gather(*(one(*p) for p in plan))
    wrong = [(status, expect, raw[:200]) for status, expect, raw in results if status != expect]
    assert not wrong, wrong
    assert all(b"internal" not in raw for _, _, raw in results)


# ---- streams and disconnects (through remote::vllm and the fake upstream) ------------------

@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")
    async with FakeOpenAI(models=["fake-model"], chunks=8) as fake:
        yield fake


@pytest.fixture
async def vllm_url(upstream: FakeOpenAI, vllm_config: Callable[..., LoadedConfig],
                   live_app: Callable[[LoadedConfig], Awaitable[int]]) -> str:
    """stackd as `stackd serve` runs it (handler cancellation on) in front of the fake upstream."""
    return f"http://127.0.0.1:{await live_app(vllm_config(upstream.url))}"


def _tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def _settled(baseline: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    for _ in range(100):
        extra = _tasks() - baseline
        if not extra:
            return extra
        await asyncio.sleep(0.05)
    return _tasks() - baseline


STREAM = {"model": "chat", "messages": MSGS, "stream": True}


async def test_client_that_hangs_up_right_after_sending(upstream: FakeOpenAI, vllm_url: str) -> None:
    # 20 s of stream: a stream nobody cancelled would outlive the wait for leftover tasks below.
    upstream.chunks, upstream.chunk_delay = 2000, 0.01
    port = int(vllm_url.rsplit(":", 1)[1])
    baseline = _tasks()

    def calls() -> int:
        return sum(r.path != "/v1/models" for r in upstream.requests)

    for path, body in [("/v1/chat/completions", STREAM),
                       ("/v1/inference/chat-completion", {"model_id": "chat", "messages": MSGS, "stream": True})]:
        for wait_for_upstream in (False, True):
            before = calls()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_post(path, orjson.dumps(body)))
            await writer.drain()
            if wait_for_upstream:  # gone once the upstream stream is under way, before reading a byte
                for _ in range(100):
                    if calls() > before:
                        break
                    await asyncio.sleep(0.01)
                assert calls() > before
                await asyncio.sleep(0.05)
            writer.close()
            await writer.wait_closed()
    # Nothing keeps running: not stackd's handlers, not the upstream call (the fake upstream's own
    # handler tasks live in this loop too, so a stream stackd forgot would show up here).
    leaked = await _settled(baseline)
    assert not leaked, leaked
    async with ClientSession() as s, s.post(f"{vllm_url}/v1/chat/completions",
                                            json={**STREAM, "stream": False}) as resp:
        assert resp.status == 200


async def test_client_that_reads_one_byte_then_stalls(upstream: FakeOpenAI, vllm_url: str) -> None:
    upstream.chunks, upstream.chunk_delay = 2000, 0.002
    port = int(vllm_url.rsplit(":", 1)[1])
    baseline = _tasks()
    # A small receive buffer, so a client that stops reading pushes back on the server soon.
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1)
    writer.write(_post("/v1/chat/completions", orjson.dumps(STREAM)))
    await writer.drain()
    assert len(await reader.read(1)) == 1
    await asyncio.sleep(0.5)  # the stall: nothing read, the upstream keeps producing
    assert upstream.disconnects == 0  # still streaming: the stall alone does not end it
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(upstream.disconnected.wait(), timeout=5)
    assert upstream.disconnects == 1
    leaked = await _settled(baseline)
    assert not leaked, leaked


async def test_upstream_credentials_from_provider_data_are_never_echoed(
    upstream: FakeOpenAI, vllm_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.api_key = "the-right-key"
    header = {"X-LlamaStack-Provider-Data": orjson.dumps({"vllm_api_token": PD_SECRET}).decode()}
    async with ClientSession() as s:
        for path, body in [("/v1/chat/completions", {**STREAM, "stream": False}),
                           ("/v1/chat/completions", STREAM),
                           ("/v1/inference/chat-completion", {"model_id": "chat", "messages": MSGS})]:
            async with s.post(vllm_url + path, json=body, headers=header) as resp:
                text = await resp.text()
                assert resp.status in (401, 403, 502) or "error" in text, text
                assert PD_SECRET not in text
    calls = [r for r in upstream.requests if r.path != "/v1/models"]
    assert calls and all(r.headers.get("Authorization") == f"Bearer {PD_SECRET}" for r in calls)
    assert PD_SECRET not in caplog.text


async def test_config_api_key_is_never_in_a_response(client: Client, secret: str) -> None:
    seen = []
    for path in ("/v1/providers", "/v1/providers/echo", "/v1/models", "/v1/inspect/routes", "/v1/nothing"):
        seen.append(await (await client.get(path)).text())
    for path in ALL_POST:
        for body in ({"model": "ghost", "model_id": "ghost", "shield_id": "ghost", "messages": MSGS, "prompt": "x",
                      "input": "x", "content": "x", "contents": ["x"]}, {"model": 3, "model_id": [3]}):
            seen.append(await (await client.post(path, json=body)).text())
    assert not [text for text in seen if secret in text]
    assert "********" in seen[1]
