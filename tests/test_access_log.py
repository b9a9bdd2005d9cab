"""Logs of a real `stackd serve` (docs/operations.md, "Logs"): one access line per request, JSON
when stderr is not a terminal, every line made while serving a request carries its id, one audit
line per auth decision, no token anywhere; X-Request-ID checked, returned and forwarded."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from stackd.testing.fake_openai import FakeOpenAI, Fault
from stackd.testing.local_server import local_server

TOKEN = "tok-SECRET-4711-never-logged"
BAD_TOKEN = "tok-WRONG-0815-never-logged"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
GENERATED = re.compile(r"[0-9a-f]{24}")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("fake-model",), chunks=4) as server:
        yield server


@pytest.fixture
async def idp() -> AsyncIterator[str]:
    async def decide(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["api_key"] != TOKEN:
            return web.json_response({"message": "no"}, status=401)
        return web.json_response({"principal": "alice@example.com", "attributes": {"roles": ["user"]}})

    app = web.Application()
    app.router.add_post("/auth", decide)
    async with local_server(app) as base:
        yield base + "/auth"


def _config(tmp_path: Path, fake: FakeOpenAI, idp: str) -> Path:
    from tests.conftest import vllm_yaml

    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    server = f"  auth:\n    provider_type: custom\n    config:\n      endpoint: {idp}\n"
    path = tmp_path / "run.yaml"
    path.write_text(vllm_yaml(fake.url, state, timeout=2.0, server=server), encoding="utf-8")
    return path


async def _serve(stackd_serve: Any, port: Callable[[], int], *args: str) -> tuple[Any, str]:
    p = port()
    proc = stackd_serve(*args, "--port", str(p))
    await asyncio.to_thread(proc.wait_serving)
    return proc, f"http://127.0.0.1:{p}"


def _json_lines(proc: Any) -> list[dict[str, Any]]:
    lines = [line for line in "".join(proc.stderr).splitlines() if line.strip()]
    # Every line on stderr is one JSON object: a collector never meets a stray text line.
    return [orjson.loads(line) for line in lines]


async def test_json_lines_carry_request_ids_and_never_a_token(
    tmp_path: Path, fake: FakeOpenAI, idp: str, stackd_serve: Any, port: Callable[[], int],
) -> None:
    proc, url = await _serve(stackd_serve, port, str(_config(tmp_path, fake, idp)))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/v1/chat/completions", json=CHAT,
                          headers={**auth, "X-Request-ID": "client-1"}) as r:
            assert r.status == 200 and r.headers["X-Request-ID"] == "client-1"
        async with s.post(url + "/v1/chat/completions", json=CHAT | {"stream": True},
                          headers={**auth, "X-Request-ID": "client-2"}) as r:
            await r.read()
            assert r.status == 200 and r.headers["X-Request-ID"] == "client-2"
        fake.fault = Fault(status=500)
        async with s.post(url + "/v1/chat/completions", json=CHAT,
                          headers={**auth, "X-Request-ID": "client-3"}) as r:
            assert r.status == 502 and r.headers["X-Request-ID"] == "client-3"
        fake.fault = None
        async with s.get(url + "/v1/models", headers={"Authorization": f"Bearer {BAD_TOKEN}",
                                                      "X-Request-ID": "client-4"}) as r:
            assert r.status == 401 and r.headers["X-Request-ID"] == "client-4"
        async with s.get(url + "/v1/models", headers=auth) as r:
            generated = r.headers["X-Request-ID"]
            assert GENERATED.fullmatch(generated)
    assert proc.stop() == 0
    lines = _json_lines(proc)
    output = proc.output()
    assert TOKEN not in output and BAD_TOKEN not in output
    assert "alice@example.com" not in output  # principals appear as their keyed hash

    access = {line["request_id"]: line for line in lines if line["logger"] == "stackd.access"}
    one = access["client-1"]
    assert one["level"] == "INFO" and one["method"] == "POST" and one["route"] == "/v1/chat/completions"
    assert one["status"] == 200 and one["model"] == "chat" and one["bytes"] > 0
    assert one["duration_ms"] >= one["upstream_ms"] > 0 and one["ttft_ms"] is None
    assert one["tokens_in"] > 0 and one["tokens_out"] == 4
    assert re.fullmatch(r"[0-9a-f]{16}", one["principal"]) and one["client"] == "127.0.0.1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", one["time"])
    stream = access["client-2"]
    assert stream["status"] == 200 and stream["ttft_ms"] > 0 and stream["bytes"] > 0
    assert stream["principal"] == one["principal"]
    assert access["client-3"]["status"] == 502
    assert access["client-4"]["status"] == 401 and access["client-4"]["principal"] is None
    assert access[generated]["route"] == "/v1/models"

    # A line logged deep inside the request (the 502's warning) carries the request's id.
    failed = [line for line in lines if line.get("request_id") == "client-3" and line["logger"] != "stackd.access"
              and line["level"] == "WARNING"]
    assert failed and "HTTP 500" in failed[0]["message"]

    audits = [line for line in lines if line["logger"] == "stackd.audit"]
    by_id = {line["request_id"]: line for line in audits}
    assert by_id["client-1"]["decision"] == "allowed" and by_id["client-1"]["rule"] == "authenticated"
    assert by_id["client-1"]["principal"] == one["principal"]
    assert by_id["client-4"]["decision"] == "refused" and by_id["client-4"]["rule"] == "invalid"
    assert len([a for a in audits if a["request_id"] == "client-1"]) == 1

    # Forwarded to the upstream with each call.
    ids = [r.headers.get("X-Request-ID") for r in fake.requests if r.path == "/v1/chat/completions"]
    assert ids == ["client-1", "client-2", "client-3"]


async def test_request_ids_that_are_not_sane_tokens_are_replaced_and_not_logged(
    tmp_path: Path, fake: FakeOpenAI, idp: str, stackd_serve: Any, port: Callable[[], int],
) -> None:
    proc, url = await _serve(stackd_serve, port, str(_config(tmp_path, fake, idp)))
    odd = ["x" * 129, "has space", "quote\"d", "semi;colon", "üñï"]
    async with aiohttp.ClientSession() as s:
        for rid in odd:
            async with s.get(url + "/v1/health", headers={"X-Request-ID": rid}) as r:
                assert r.status == 200 and GENERATED.fullmatch(r.headers["X-Request-ID"]), rid
        longest = "a" * 128
        async with s.get(url + "/v1/health", headers={"X-Request-ID": longest}) as r:
            assert r.headers["X-Request-ID"] == longest
    proc.stop()
    output = proc.output()
    assert "x" * 129 not in output and "has space" not in output and "semi;colon" not in output
    assert len([line for line in _json_lines(proc) if line["logger"] == "stackd.access"]) == len(odd) + 1


async def test_text_format_and_no_access_log(
    tmp_path: Path, fake: FakeOpenAI, idp: str, stackd_serve: Any, port: Callable[[], int],
) -> None:
    config = str(_config(tmp_path, fake, idp))
    proc, url = await _serve(stackd_serve, port, "--log-format", "text", "--log-level", "info", config)
    async with aiohttp.ClientSession() as s, s.get(url + "/v1/models", headers={"X-Request-ID": "txt-1"}) as r:
        assert r.status == 401
    proc.stop()
    text = "".join(proc.stderr)
    line = next(line for line in text.splitlines() if "stackd.access" in line)
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z INFO stackd.access \[txt-1\]: GET /v1/models 401 .*status=401", line)
    assert "{" not in line

    proc, url = await _serve(stackd_serve, port, "--no-access-log", config)
    async with aiohttp.ClientSession() as s, s.get(url + "/v1/health") as r:
        assert r.status == 200
    proc.stop()
    assert all(line["logger"] != "stackd.access" for line in _json_lines(proc))


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--log-level", "chatty"], {}, "log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'chatty')"),
    (["--log-format", "xml"], {}, "invalid choice: 'xml'"),
    ([], {"STACKD_LOG_FORMAT": "xml"}, "STACKD_LOG_FORMAT must be one of auto, json, text (got 'xml')"),
])
def test_log_options_are_checked(run_cli: Any, args: list[str], env: dict[str, str], message: str) -> None:
    result = run_cli(*args, "version", env=env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_auto_is_text_on_a_terminal_and_json_elsewhere(tmp_path: Path) -> None:
    import os

    from stackd.logs import resolve_format

    master, replica = os.openpty()
    try:
        with open(replica, "w", closefd=False) as tty, open(tmp_path / "log", "w") as file:
            assert resolve_format("auto", tty) == "text"
            assert resolve_format("auto", file) == "json"
            assert resolve_format("json", tty) == "json" and resolve_format("text", file) == "text"
    finally:
        os.close(replica)
        os.close(master)


def test_generated_request_ids_are_unique_here_and_in_a_forked_worker() -> None:
    """New ids are a per-process random prefix and a count: a forked process (a worker) draws its own prefix."""
    import os

    from stackd.server.http import _ids

    ids = {_ids.new() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(GENERATED.fullmatch(i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write one id and leave at once
        os.write(write, _ids.new().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert GENERATED.fullmatch(child) and child[:12] != next(iter(ids))[:12]
