"""Inference end to end: a real stackd app, the remote::vllm plugin, and a fake OpenAI upstream on 127.0.0.1.

What a client sends reaches the upstream, what the upstream answers reaches the client, and every
upstream failure becomes the documented status (or one error frame once a stream has begun).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from stackd.loading import LoadedConfig
from stackd.server import create_app
from stackd.testing.fake_openai import FakeOpenAI, Fault

pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")

Client = TestClient[Any, Any]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["fake-model"], chunks=8) as upstream:
        yield upstream


@pytest.fixture
async def client(fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig]) -> AsyncIterator[Client]:
    loaded = vllm_config(fake.url, timeout=1.0)
    async with TestClient(TestServer(create_app(loaded), handler_cancellation=True)) as c:
        fake.reset()
        yield c


def _frames(raw: bytes) -> list[bytes]:
    return [f[6:] for f in raw.split(b"\n\n") if f.startswith(b"data: ")]


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


async def test_every_field_reaches_the_upstream_and_every_answer_field_the_client(
    client: Client, fake: FakeOpenAI
) -> None:
    body = {**CHAT, "seed": 7, "n": 1, "logprobs": True, "top_logprobs": 2, "guided_json": {"type": "object"},
            "guided_choice": ["a", "b"], "some_future_field": {"x": [1]}}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    answer = await resp.json()
    sent = fake.requests[-1].body
    assert sent is not None
    assert sent["model"] == "fake-model"  # only the model name is rewritten
    assert {k: v for k, v in sent.items() if k not in ("model", "max_tokens")} == {
        k: v for k, v in body.items() if k != "model"
    }
    assert answer["model"] == "chat"
    assert set(answer) >= {"id", "object", "created", "choices", "usage"}


async def test_stream_frames_and_done_marker(client: Client) -> None:
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True,
                                                           "stream_options": {"include_usage": True}})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    frames = _frames(await resp.read())
    assert frames[-1] == b"[DONE]"
    chunks = [orjson.loads(f) for f in frames[:-1]]
    assert all(c["model"] == "chat" for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text

    # A Llama Stack client announces itself and gets no [DONE] (its 0.2.x parser fails on it).
    resp = await client.post("/v1/openai/v1/chat/completions", json={**CHAT, "stream": True},
                             headers={"X-LlamaStack-Client-Version": "0.2.12"})
    assert _frames(await resp.read())[-1] != b"[DONE]"


async def test_native_chat_completion_through_the_provider(client: Client) -> None:
    resp = await client.post("/v1/inference/chat-completion", json={
        "model_id": "chat", "messages": [{"role": "user", "content": "hi"}],
        "sampling_params": {"strategy": {"type": "greedy"}, "max_tokens": 3},
    })
    assert resp.status == 200
    body = await resp.json()
    assert body["completion_message"]["stop_reason"] == "out_of_tokens"
    assert body["completion_message"]["content"]

    resp = await client.post("/v1/inference/chat-completion", json={
        "model_id": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    events = [orjson.loads(f)["event"] for f in _frames(await resp.read())]
    assert [e["event_type"] for e in (events[0], events[-1])] == ["start", "complete"]
    assert events[-1]["stop_reason"] == "end_of_turn"


async def test_embeddings_both_ways(client: Client) -> None:
    resp = await client.post("/v1/embeddings", json={"model": "embed", "input": ["a", "b"]})
    assert [len(d["embedding"]) for d in (await resp.json())["data"]] == [8, 8]
    resp = await client.post("/v1/inference/embeddings", json={"model_id": "embed", "contents": ["a"]})
    assert len((await resp.json())["embeddings"][0]) == 8


@pytest.mark.parametrize(
    ("fault", "status", "message"),
    [
        (Fault(status=400, message="max_tokens is too large"), 400, "max_tokens is too large"),
        (Fault(status=422, message="bad field"), 422, "bad field"),
        (Fault(status=500, message="boom"), 502, "failed with HTTP 500: boom"),
        (Fault(non_json=True), 502, "not JSON"),
        (Fault(cut_after=1), 502, "closed the connection"),
        (Fault(delay=3.0), 504, "did not answer in time"),
    ],
)
async def test_upstream_failures_map_to_statuses(
    client: Client, fake: FakeOpenAI, fault: Fault, status: int, message: str
) -> None:
    fake.fault = fault
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert message in error["message"]
    assert "vllm" in error["message"]  # which provider failed
    fake.reset()
    ok = await client.post("/v1/chat/completions", json=CHAT)  # the server keeps serving
    assert ok.status == 200


async def test_a_stream_cut_mid_way_ends_with_one_error_frame(client: Client, fake: FakeOpenAI) -> None:
    fake.fault = Fault(cut_after=3)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200
    frames = _frames(await resp.read())
    assert len(frames) == 4
    last = orjson.loads(frames[-1])
    assert "error" in last and "vllm" in last["error"]["message"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_down_is_503_naming_provider_and_url(vllm_config: Callable[..., LoadedConfig]) -> None:
    port = _closed_port()
    loaded = vllm_config(f"http://127.0.0.1:{port}")
    async with TestClient(TestServer(create_app(loaded))) as c:
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 503
        message = (await resp.json())["error"]["message"]
        assert "'vllm'" in message and f"127.0.0.1:{port}" in message


async def test_client_disconnect_cancels_the_upstream_request(
    fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig], live_app: Callable[[LoadedConfig], Awaitable[int]]
) -> None:
    fake.chunks, fake.chunk_delay = 200, 0.05
    port = await live_app(vllm_config(fake.url))
    fake.reset()
    async with ClientSession() as session:
        resp = await session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={**CHAT, "stream": True})
        await resp.content.readuntil(b"\n\n")  # the stream has begun
        resp.close()  # the client goes away
    await asyncio.wait_for(fake.disconnected.wait(), timeout=5)
    assert fake.disconnects == 1


async def test_provider_data_is_per_request(client: Client, fake: FakeOpenAI) -> None:
    async def one(i: int) -> None:
        resp = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "user": f"u{i}"},
            headers={"X-LlamaStack-Provider-Data": orjson.dumps({"vllm_api_token": f"tok-{i}"}).decode()},
        )
        await resp.read()

    await asyncio.gather(*(one(i) for i in range(24)))
    seen = {r.body["user"]: r.headers.get("Authorization") for r in fake.requests if r.body}
    assert seen == {f"u{i}": f"Bearer tok-{i}" for i in range(24)}

    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"X-LlamaStack-Provider-Data": "{oops"})
    assert resp.status == 400


async def _poll(fetch: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool]) -> Any:
    for _ in range(50):
        value = await fetch()
        if ok(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition never held; last value: {value!r}")


async def test_chat_completions_are_stored_streams_included(client: Client, fake: FakeOpenAI) -> None:
    fake.unique_ids = True
    first = await (await client.post("/v1/chat/completions", json=CHAT)).json()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True,
                                                           "messages": [{"role": "user", "content": "again"}]})
    streamed = [orjson.loads(f) for f in _frames(await resp.read())[:-1]]

    async def listing() -> Any:
        return await (await client.get("/v1/chat/completions?order=asc")).json()

    page = await _poll(listing, lambda p: len(p["data"]) == 2)
    assert [item["id"] for item in page["data"]] == [first["id"], streamed[0]["id"]]
    stored_stream = page["data"][1]
    assert stored_stream["model"] == "chat"
    assert stored_stream["input_messages"] == [{"role": "user", "content": "again"}]
    assert stored_stream["choices"][0]["message"]["content"] == "".join(
        c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])

    one = await (await client.get(f"/v1/openai/v1/chat/completions/{first['id']}")).json()
    assert one["choices"] == first["choices"]
    messages = await (await client.get(f"/v1/chat/completions/{first['id']}/messages")).json()
    assert [m["content"] for m in messages["data"]] == ["hi"]
    missing = await client.get("/v1/chat/completions/nope")
    assert missing.status == 404


async def test_a_client_that_stops_reading_releases_the_upstream(
    fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig], live_app: Callable[[LoadedConfig], Awaitable[int]]
) -> None:
    fake.chunks = 150_000  # ~20 MB of events: more than the kernel's socket buffers hold
    port = await live_app(vllm_config(fake.url, server="  stream_stall_timeout: 0.5\n"))
    fake.reset()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    body = orjson.dumps({**CHAT, "stream": True})
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    await loop.sock_sendall(sock, request)
    # ... and never read: the server must give up on this client and release the upstream.
    try:
        await asyncio.wait_for(fake.disconnected.wait(), timeout=30)
        assert fake.disconnects == 1
    finally:
        sock.close()
