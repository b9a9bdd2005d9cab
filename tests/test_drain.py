"""Graceful drain of one ``stackd serve`` process on SIGTERM, clause by clause (docs/operations.md,
"Shutdown and drain"): the listener closes at once; requests and streams that end within
``server.shutdown_grace`` end normally; then a stream still running ends with an error frame
(never a cut chunked body) and a plain request still running gets a 503 with
``Connection: close`` (never a dropped connection); then providers close, in reverse order.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from stackd.testing.fake_openai import FakeOpenAI, Fault

__all__: list[str] = []

pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")

GRACE = 3.0
MESSAGES = [{"role": "user", "content": "hi"}]


def _config(state: Path, finite: str, endless: str) -> str:
    return f"""\
apis: [inference]
providers:
  inference:
  - provider_id: first
    provider_type: remote::vllm
    config: {{url: "{finite}/v1", timeout: 60}}
  - provider_id: second
    provider_type: remote::vllm
    config: {{url: "{endless}/v1", timeout: 60}}
metadata_store: {{type: sqlite, db_path: {state}/registry.db}}
inference_store: {{type: sqlite, db_path: {state}/store.db}}
models:
- model_id: slow
  provider_id: first
  provider_model_id: fake-model
- model_id: endless
  provider_id: second
  provider_model_id: fake-model
server:
  port: 0
  shutdown_grace: {GRACE}
"""


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def _until(condition: Callable[[], bool], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_sigterm_drains_every_clause_in_order(stackd_serve: Callable[..., Any], tmp_path: Path) -> None:
    # "slow": a stream of 40 events 50 ms apart (about 2 s, within the grace) on the first provider.
    # "endless": a stream that never ends, and a plain completion the upstream answers after 60 s.
    async with FakeOpenAI(chunks=40, chunk_delay=0.05) as finite, \
            FakeOpenAI(chunks=1_000_000, chunk_delay=0.02, fault=Fault(delay=60), fault_on=("/v1/completions",)) \
            as endless:
        config = tmp_path / "run.yaml"
        config.write_text(_config(tmp_path, finite.url, endless.url))
        proc = stackd_serve(str(config))
        url = await asyncio.to_thread(proc.wait_serving)
        port = int(url.rsplit(":", 1)[1])
        first_bytes: list[asyncio.Event] = [asyncio.Event(), asyncio.Event()]

        async with aiohttp.ClientSession() as session:

            async def stream(i: int, model: str) -> bytes:
                async with session.post(url + "/v1/chat/completions",
                                        json={"model": model, "messages": MESSAGES, "stream": True}) as resp:
                    assert resp.status == 200
                    body = await resp.content.readany()
                    first_bytes[i].set()
                    return body + await resp.read()  # ClientPayloadError if the chunked body is cut

            async def plain() -> tuple[int, str | None, Any]:
                async with session.post(url + "/v1/completions", json={"model": "endless", "prompt": "hi"}) as resp:
                    return resp.status, resp.headers.get("Connection"), await resp.json()

            slow = asyncio.create_task(stream(0, "slow"))
            never = asyncio.create_task(stream(1, "endless"))
            waiting = asyncio.create_task(plain())
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_bytes)), 20)
            await _until(lambda: any(r.path == "/v1/completions" for r in endless.requests))

            began = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            # The listener closes at once, long before the grace is over.
            await _until(lambda: _refuses(port), within=GRACE / 2)

            slow_body = await slow
            assert time.monotonic() - began < GRACE, "the finite stream ended within the grace"
            status, connection, answer = await waiting
            never_body = await never
            rc = await asyncio.to_thread(proc.wait, 20)
            took = time.monotonic() - began

    out = proc.output()
    assert rc == 0, out
    assert GRACE - 0.1 < took < GRACE + 4, took
    # The stream that could finish did, whole, with [DONE].
    frames = [f for f in slow_body.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]" and len(frames) > 40, frames[-3:]
    # The endless one ended with a frame saying why, and a proper end of the chunked body.
    last = orjson.loads([f for f in never_body.split(b"\n\n") if f][-1].removeprefix(b"data: "))
    assert last["error"]["type"] == "service_unavailable" and "shutting down" in last["error"]["message"]
    # The plain request got an answer in the one error shape, and the connection is closed after it.
    assert status == 503, answer
    assert answer["error"]["type"] == "service_unavailable"
    assert "shutting down" in answer["error"]["message"] and "server.shutdown_grace" in answer["error"]["message"]
    assert connection is not None and connection.lower() == "close"
    assert "ended 1 stream(s) and answered 503 to 1 request(s)" in out
    # Providers close after the requests ended, in reverse order of their start.
    ended_at = out.index("ended 1 stream(s)")
    second, first = out.index("closed provider second"), out.index("closed provider first")
    assert ended_at < second < first, out
    assert "Traceback" not in out


async def test_a_second_signal_answers_a_plain_request_at_once(stackd_serve: Callable[..., Any],
                                                              tmp_path: Path) -> None:
    async with FakeOpenAI() as finite, FakeOpenAI(fault=Fault(delay=60)) as endless:
        config = tmp_path / "run.yaml"
        config.write_text(_config(tmp_path, finite.url, endless.url).replace(f"shutdown_grace: {GRACE}",
                                                                            "shutdown_grace: 60"))
        proc = stackd_serve(str(config))
        url = await asyncio.to_thread(proc.wait_serving)
        async with aiohttp.ClientSession() as session:

            async def plain() -> tuple[int, Any]:
                async with session.post(url + "/v1/completions", json={"model": "endless", "prompt": "hi"}) as resp:
                    return resp.status, await resp.json()

            waiting = asyncio.create_task(plain())
            await _until(lambda: any(r.path == "/v1/completions" for r in endless.requests))
            began = time.monotonic()
            proc.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            proc.proc.send_signal(signal.SIGINT)
            status, answer = await waiting
            rc = await asyncio.to_thread(proc.wait, 20)
    assert rc == 0, proc.output()
    assert time.monotonic() - began < 5  # not the 60 s grace
    assert status == 503 and answer["error"]["type"] == "service_unavailable", answer


async def test_the_draining_event_is_set_before_the_app_shuts_down(echo_config: Path) -> None:
    """``app[DRAINING]`` (what a readiness route reads) is set when the shutdown begins, before the
    listener closes and long before the app's own shutdown."""
    from stackd.loading import load_config
    from stackd.server import create_app
    from stackd.server.keys import DRAINING
    from stackd.server.runner import Limits, bind, serve

    app = create_app(load_config(echo_config))
    seen: list[bool] = []

    async def on_shutdown(app: Any) -> None:
        seen.append(app[DRAINING].is_set())

    app.on_shutdown.append(on_shutdown)
    serving, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(app, bind("127.0.0.1", 0), limits=Limits(), stop=stop, announce=serving.set))
    await asyncio.wait_for(serving.wait(), 20)
    assert not app[DRAINING].is_set()
    stop.set()
    await asyncio.wait_for(task, 20)
    assert seen == [True]
