"""The HTTP layer under attack, as ``stackd serve`` runs it: slow and partial requests, too many
connections, requests aiohttp's parser refuses, bodies refused part-way (a gzip bomb), ``Expect:
100-continue``, a second server on a busy port, and a shutdown with never-ending streams.

Raw sockets speak the protocol; the server is either ``stackd.server.runner.StackdRunner`` on
127.0.0.1 in this process or a real ``stackd serve`` process where signals and exits matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import resource
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from stackd.loading import load_config
from stackd.server import create_app
from stackd.server.runner import Limits, StackdRunner, bind
from stackd.testing.fake_openai import FakeOpenAI, Fault

CHAT = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}
TOKEN = "sk-never-quote-me-8086"

Start = Callable[..., Awaitable[int]]


@pytest.fixture
async def start(write_config: Callable[..., Path]) -> AsyncIterator[Start]:
    """``port = await start(server_yaml, **limits)``: the echo app behind StackdRunner on 127.0.0.1."""
    runners: list[StackdRunner] = []

    async def run(server: str = "", **limits: Any) -> int:
        loaded = load_config(write_config(server=server) if server else write_config())
        runner = StackdRunner(create_app(loaded), Limits(**limits))
        await runner.setup()
        runners.append(runner)
        sock = bind("127.0.0.1", 0)[0]
        await web.SockSite(runner, sock).start()
        return int(sock.getsockname()[1])

    yield run
    for runner in reversed(runners):
        await runner.cleanup()


async def _exchange(port: int, data: bytes, *, wait: float = 5.0) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes; the answer and how long the close took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                out += chunk
        return out, time.monotonic() - began
    finally:
        writer.close()
        await _closed(writer)


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


def _answer(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, orjson.loads(body)


def _one_error(body: dict[str, Any], kind: str | None = None) -> None:
    assert set(body) <= {"error", "errors"}, body
    assert body["error"]["message"] and body["error"]["type"], body
    if kind:
        assert body["error"]["type"] == kind, body


# ---- requests the parser refuses (item 9) -----------------------------------------------------

SECRET_LINE = f"Bearer {TOKEN}".encode()
REFUSED = {
    "header over the limit": (b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + SECRET_LINE
                              + b"q" * 9000 + b"\r\n\r\n", 431),
    "header name over the limit": (b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-" + TOKEN.encode() + b"n" * 9000
                                   + b": 1\r\n\r\n", 431),
    "request line over the limit": (b"GET /v1/models/" + TOKEN.encode() * 600
                                    + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
    "too many headers": (b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n"
                         + b"".join(b"X-%d: " % i + SECRET_LINE + b"\r\n" for i in range(200)) + b"\r\n", 431),
    "bad chunk size": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + TOKEN.encode() + b"\r\nabc\r\n0\r\n\r\n", 400),
    "brotli body": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Encoding: br\r\n"
                    b"Content-Length: 4\r\n\r\nabcd", 415),
    "unknown transfer coding": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                                b"Transfer-Encoding: gzip\r\n\r\nabcd", 501),
    "length and chunked together": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                                    b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    "TLS to the plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + TOKEN.encode() + b"\r\n\r\n", 400),
    "bad header token": (b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX(" + TOKEN.encode() + b"): 1\r\n\r\n", 400),
}


@pytest.mark.parametrize("name", list(REFUSED))
async def test_parser_refusals_are_json_quote_nothing_and_log_one_line(
    start: Start, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    if name == "brotli body" and importlib.util.find_spec("brotli") is not None:
        pytest.skip("aiohttp decodes br when Brotli is installed")
    port = await start()
    request, status = REFUSED[name]
    raw, _ = await _exchange(port, request)
    got, headers, body = _answer(raw)
    assert got == status, raw[:300]
    assert headers["content-type"].startswith("application/json") and headers["x-request-id"]
    _one_error(body)
    assert TOKEN.encode() not in raw
    assert TOKEN not in caplog.text and "Traceback" not in caplog.text
    refusals = [r for r in caplog.records if r.name.startswith(("stackd", "aiohttp")) and r.levelno >= logging.INFO
                and "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.INFO and refusals[0].exc_info is None, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    # The server is unharmed.
    ok, _ = await _exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert _answer(ok)[0] == 200


async def test_a_body_that_does_not_decode_is_one_400_and_no_traceback(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = await start()
    for body in (b'{"model": "echo-1"} not gzip', zlib.compress(orjson.dumps(CHAT))[:-6] + b"garbage"):
        raw, _ = await _exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                                 b"Content-Encoding: gzip\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, headers, out = _answer(raw)
        assert status == 400 and headers["connection"] == "close", raw[:300]
        _one_error(out, "invalid_request_error")
        assert raw.count(b"HTTP/1.") == 1  # one answer, not a second one for the parser's error
    # A coding aiohttp does not know it passes on undecoded: refused, not read as JSON.
    raw, _ = await _exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Encoding: "
                             + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
    status, _, out = _answer(raw)
    assert status == 415 and TOKEN.encode() not in raw
    _one_error(out, "unsupported_media_type")
    assert "Traceback" not in caplog.text and TOKEN not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# ---- slow and partial requests, connection limits (item 5) ------------------------------------


async def test_slow_headers_and_bodies_are_cut_with_408(start: Start) -> None:
    port = await start("  body_timeout: 0.5\n", header_timeout=0.5)
    partial_headers = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Le"
    body = orjson.dumps(CHAT)
    partial_body = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body[:-1])
    chunked_body = (b"POST /v1/inference/chat-completion HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"5\r\n{\"a\":")
    began = time.monotonic()
    answers = await asyncio.gather(*(
        _exchange(port, request) for request in [partial_headers] * 40 + [partial_body] * 40 + [chunked_body] * 20))
    # All of them at once: each connection has its own deadline, none waits for another's.
    assert time.monotonic() - began < 4
    for (raw, took), request in zip(answers, [partial_headers] * 40 + [partial_body] * 40 + [chunked_body] * 20,
                                    strict=True):
        status, headers, out = _answer(raw)
        assert status == 408, raw[:300]
        assert headers["connection"] == "close"
        _one_error(out, "request_timeout")
        which = "header_timeout" if request is partial_headers else "body_timeout"
        assert which in out["error"]["message"]
        assert took < 3.5
    ok, _ = await _exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert _answer(ok)[0] == 200


async def test_idle_keepalive_connections_are_closed(start: Start) -> None:
    port = await start(keepalive_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        began = time.monotonic()
        async with asyncio.timeout(5):
            data = b""
            while chunk := await reader.read(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and time.monotonic() - began < 3
    finally:
        writer.close()
        await _closed(writer)


async def test_connections_over_the_limit_get_503_at_once(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = await start(max_connections=20, header_timeout=30)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    try:
        for _, writer in held:
            writer.write(b"GET /v1/health HTTP/1.1\r\n")  # and never more
        await asyncio.sleep(0.2)
        answers = await asyncio.gather(*(_exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n", wait=2)
                                         for _ in range(30)))
        for raw, took in answers:
            status, headers, out = _answer(raw)
            assert status == 503 and headers["connection"] == "close", raw[:200]
            _one_error(out, "service_unavailable")
            assert took < 1.5
        lines = [r for r in caplog.records if "server.max_connections" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING, caplog.text
    finally:
        for _, writer in held:
            writer.close()
            await _closed(writer)
    await asyncio.sleep(0.2)
    ok, _ = await _exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert _answer(ok)[0] == 200


# ---- bodies refused part-way, Expect: 100-continue -------------------------------------------


def _endless_gzip() -> Callable[[], bytes]:
    """Chunked-encoded pieces of one gzip stream of zeros that never ends (1 MiB inflated per piece)."""
    deflate = zlib.compressobj(wbits=31)
    zeros = bytes(1 << 20)

    def piece() -> bytes:
        data = deflate.compress(zeros) + deflate.flush(zlib.Z_SYNC_FLUSH)
        return b"%x\r\n" % len(data) + data + b"\r\n"

    return piece


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
async def test_a_body_over_the_limit_is_not_read_on(start: Start, encoding: str) -> None:
    """After the 413 the server stops reading (and inflating): aiohttp would read on for 10 s."""
    port = await start("  max_body_bytes: 100000\n")
    piece = _endless_gzip() if encoding == "gzip" else (lambda: b"10000\r\n" + b"a" * 0x10000 + b"\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 + (b"Content-Encoding: gzip\r\n" if encoding == "gzip" else b"")
                 + b"Transfer-Encoding: chunked\r\n\r\n")
    began = time.monotonic()
    answer = b""
    cpu = time.process_time()
    try:
        async with asyncio.timeout(8):
            while True:  # keep sending, as a bomb does, until the server hangs up
                writer.write(piece())
                await writer.drain()
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), 0.01)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                answer += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
        await _closed(writer)
    took = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    _one_error(_answer(answer)[2], "request_too_large")
    assert took < 4, took
    assert time.process_time() - cpu < 3


async def test_expect_continue_is_refused_before_100_when_too_large(start: Start) -> None:
    port = await start("  max_body_bytes: 2000\n")
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\n")
    raw, took = await _exchange(port, head + b"Content-Length: 100000000000\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 413"), raw[:200]  # no "100 Continue" first
    _one_error(_answer(raw)[2], "request_too_large")
    assert took < 3
    raw, _ = await _exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nExpect: 202-accepted\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
    status, _, out = _answer(raw)
    assert status == 417
    _one_error(out, "expectation_failed")
    # Within the limit: 100 Continue, then the body, then the answer.
    body = orjson.dumps(CHAT)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        final = await asyncio.wait_for(reader.read(), 3)
        status, _, out = _answer(final)
        assert status == 200 and out["choices"][0]["message"]["content"] == "hi"
    finally:
        writer.close()
        await _closed(writer)


# ---- stackd serve: bind first, announce the truth, shut down in bounded time ------------------


def _http(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status)


def test_a_second_server_on_a_busy_port_starts_nothing(
    stackd_serve: Callable[..., Any], write_config: Callable[..., Path], port: Callable[[], int]
) -> None:
    p = port()
    first = stackd_serve(str(write_config(server=f"  port: {p}\n")))
    url = first.wait_serving()
    # Same stores, fewer models: had it started, the reconcile would unregister echo-1 under the first.
    second = stackd_serve(str(write_config(name="other.yaml", server=f"  port: {p}\n", models="- model_id: echo-2\n")))
    assert second.wait() == 1
    assert "cannot listen on" in second.output() and "Address already in use" in second.output()
    assert "starting provider" not in second.output() and "Traceback" not in second.output()
    import urllib.request

    with urllib.request.urlopen(url + "/v1/models", timeout=5) as resp:
        ids = [m["identifier"] for m in orjson.loads(resp.read())["data"]]
    assert "echo-1" in ids and "echo-2" not in ids
    assert first.stop() == 0


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(("host", "words", "loopback"), [
    ("0.0.0.0", "all IPv4 interfaces", "127.0.0.1"),
    ("::", "all IPv6 interfaces", "[::1]"),
    ("127.0.0.1", None, "127.0.0.1"),
])
def test_the_announcement_says_what_is_bound(
    stackd_serve: Callable[..., Any], write_config: Callable[..., Path], host: str, words: str | None, loopback: str
) -> None:
    if ":" in host and not _has_ipv6():
        pytest.skip("no IPv6 here")
    proc = stackd_serve(str(write_config(server=f"  host: \"{host}\"\n  port: 0\n")))
    url = proc.wait_serving()
    line = next(line for line in proc.stdout if " serving " in line)
    assert "localhost" not in line
    if words:
        assert words in line and "reachable from other machines" in line
        assert (f"[{host}]:" if ":" in host else f"{host}:") in line
    assert url.startswith(f"http://{loopback}:")
    assert _http(url + "/v1/health") == 200
    assert proc.stop() == 0


def _vllm_yaml(url: str, state: Path, *, grace: float) -> str:
    return f"""\
apis: [inference]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "{url}/v1", timeout: 5}}
metadata_store: {{type: sqlite, db_path: {state}/registry.db}}
inference_store: {{type: sqlite, db_path: {state}/store.db}}
models:
- model_id: chat
  provider_model_id: fake-model
server:
  port: 0
  shutdown_grace: {grace}
"""


async def test_sigterm_lets_a_request_in_flight_finish(stackd_serve: Callable[..., Any], tmp_path: Path) -> None:
    pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")
    async with FakeOpenAI(fault=Fault(delay=1.5)) as upstream:
        config = tmp_path / "vllm.yaml"
        config.write_text(_vllm_yaml(upstream.url, tmp_path, grace=10))
        proc = stackd_serve(str(config))
        url = await asyncio.to_thread(proc.wait_serving)
        async with aiohttp.ClientSession() as session:

            async def chat() -> tuple[int, Any]:
                async with session.post(url + "/v1/chat/completions",
                                        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]}) as r:
                    return r.status, await r.json()

            task = asyncio.create_task(chat())
            await asyncio.sleep(0.5)
            began = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            status, body = await task
            rc = await asyncio.to_thread(proc.wait, 15)
            took = time.monotonic() - began
    assert status == 200 and body["choices"][0]["message"]["content"], body
    assert rc == 0 and took < 4, (took, proc.output())  # the answer, not the whole 10 s grace


@pytest.mark.parametrize(("signals", "grace"), [(1, 1.5), (2, 30.0)])
async def test_sigterm_ends_never_ending_streams_with_a_frame_within_the_grace(
    stackd_serve: Callable[..., Any], tmp_path: Path, signals: int, grace: float
) -> None:
    """One signal: streams get the grace, then their last frame. A second signal: no more grace."""
    pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")
    async with FakeOpenAI(chunks=1_000_000, chunk_delay=0.02) as upstream:
        config = tmp_path / "vllm.yaml"
        config.write_text(_vllm_yaml(upstream.url, tmp_path, grace=grace))
        proc = stackd_serve(str(config))
        url = await asyncio.to_thread(proc.wait_serving)
        async with aiohttp.ClientSession() as session:

            async def stream(path: str, body: dict[str, Any]) -> bytes:
                async with session.post(url + path, json=body) as resp:
                    assert resp.status == 200
                    return await resp.read()  # raises ClientPayloadError if the chunked body is cut

            messages = [{"role": "user", "content": "hi"}]
            tasks = [
                asyncio.create_task(stream("/v1/chat/completions",
                                           {"model": "chat", "messages": messages, "stream": True})),
                asyncio.create_task(stream("/v1/inference/chat-completion",
                                           {"model_id": "chat", "messages": messages, "stream": True})),
            ]
            await asyncio.sleep(1.0)  # the streams are flowing
            assert not any(t.done() for t in tasks)
            began = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            if signals == 2:
                await asyncio.sleep(0.5)
                proc.proc.send_signal(signal.SIGINT)
            rc = await asyncio.to_thread(proc.wait, 15)
            took = time.monotonic() - began
            bodies = await asyncio.gather(*tasks)
    assert rc == 0, proc.output()
    assert (1.4 < took < 1.5 + 2.5) if signals == 1 else took < 3, took
    for body in bodies:
        frames = [f for f in body.split(b"\n\n") if f]
        assert len(frames) > 5
        last = orjson.loads(frames[-1].removeprefix(b"data: "))
        assert last["error"]["type"] == "service_unavailable" and "shutting down" in last["error"]["message"]
    assert "ended 2 stream(s)" in proc.output()
    assert "Traceback" not in proc.output()


def test_sigterm_without_requests_exits_at_once(
    stackd_serve: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    proc = stackd_serve(str(write_config(server="  port: 0\n  shutdown_grace: 30\n")))
    url = proc.wait_serving()
    # An idle keep-alive connection and a half-sent request do not hold the shutdown.
    idle = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    idle.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n")
    try:
        began = time.monotonic()
        assert proc.stop() == 0
        assert time.monotonic() - began < 3
    finally:
        idle.close()


def test_connections_over_the_limit_under_stackd_serve(
    stackd_serve: Callable[..., Any], write_config: Callable[..., Path]
) -> None:
    """The same with uvloop (whose transports are not asyncio's classes) in the real process."""
    proc = stackd_serve(str(write_config(server="  port: 0\n  max_connections: 5\n")))
    port = int(proc.wait_serving().rsplit(":", 1)[1])
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        time.sleep(0.3)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=3) as extra:
                extra.sendall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                data = b""
                while chunk := extra.recv(65536):
                    data += chunk
            status, _, body = _answer(data)
            assert status == 503
            _one_error(body, "service_unavailable")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert _http(f"http://127.0.0.1:{port}/v1/health") == 200
    assert proc.stop() == 0
    assert proc.output().count("server.max_connections") == 1


def test_running_out_of_file_descriptors_is_logged_once(write_config: Callable[..., Path], tmp_path: Path) -> None:
    """More connections than descriptors (a limit set over ``ulimit -n``): one ERROR line says why."""
    stackd = str(Path(sys.executable).with_name("stackd"))
    config = write_config(server="  port: 0\n  max_connections: 1000\n  header_timeout: 4\n")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.Popen([stackd, "serve", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path, preexec_fn=low_limit)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if " serving " in line:
                break
        port = int(lines[-1].rsplit(":", 1)[1])
        flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        time.sleep(2.5)
        for sock in flood:
            sock.close()
        time.sleep(0.5)
        assert _http(f"http://127.0.0.1:{port}/v1/health") == 200  # and it recovers
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    text = "".join(lines) + out
    assert "over the open-file limit (64)" in text
    assert text.count("out of file descriptors") == 1, text
    assert "Traceback" not in text


def test_a_tls_handshake_that_never_comes_is_cut_at_the_header_timeout(
    stackd_serve: Callable[..., Any], write_config: Callable[..., Path], tmp_path: Path
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    proc = stackd_serve(str(write_config(server=f"  port: 0\n  header_timeout: 1\n"
                                                f"  tls_certfile: {tmp_path / 'cert.pem'}\n"
                                                f"  tls_keyfile: {tmp_path / 'key.pem'}\n")))
    url = proc.wait_serving()
    assert url.startswith("https://127.0.0.1:")
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=10) as silent:
        began = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert silent.recv(100) == b""  # no ClientHello: closed by the server
        assert time.monotonic() - began < 4
    assert proc.stop() == 0
