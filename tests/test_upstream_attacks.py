"""Issue #10, upstreams and the store: a misbehaving upstream, through a real stackd app, the
remote::vllm plugin and FakeOpenAI on 127.0.0.1.

- What the upstream sends is bounded (server.max_upstream_body_bytes, max_upstream_line_bytes):
  502, or one error frame once a stream began.
- Deadlines per provider (total_timeout, stream_first_byte_timeout, stream_idle_timeout) cut off
  an upstream that drips bytes: 504, or an error frame.
- The store keeps a completion up to server.max_stored_completion_bytes, folded in as the stream
  passes; a larger one is answered in full and not stored, with one log line.
- The answer never depends on the store: odd ids and times are normalised for the record, and a
  record the store cannot keep is one log line, never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from stackd.loading import ConfigError, LoadedConfig, parse_config
from stackd.server import create_app
from stackd.testing.fake_openai import FakeOpenAI, Fault

pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")

Client = TestClient[Any, Any]
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


def config(url: str, state: Path, *, provider: str = "", body_limit: int = 65536) -> LoadedConfig:
    text = f"""\
apis: [inference]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "{url}/v1", timeout: 5{provider}}}
metadata_store: {{type: sqlite, db_path: {state}/registry.db}}
inference_store: {{type: sqlite, db_path: {state}/store.db}}
models:
- model_id: chat
  provider_model_id: fake-model
server:
  max_upstream_body_bytes: {body_limit}
  max_upstream_line_bytes: 16384
  max_stored_completion_bytes: 8192
"""
    return parse_config(text, env={})


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["fake-model"], chunks=8) as upstream:
        yield upstream


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    clients: list[Client] = []

    async def make(url: str, **kw: Any) -> Client:
        # Each app its own state: one SQLite metadata store serves one server at a time.
        state = tmp_path / f"app{len(clients)}"
        state.mkdir()
        client = TestClient(TestServer(create_app(config(url, state, **kw)), handler_cancellation=True))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(fake: FakeOpenAI, make_client: Callable[..., Any]) -> Client:
    c: Client = await make_client(fake.url)
    fake.reset()
    return c


def frames(raw: bytes) -> list[bytes]:
    return [f[6:] for f in raw.split(b"\n\n") if f.startswith(b"data: ")]


async def stored(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/v1/chat/completions", params={"limit": "100"})
    assert resp.status == 200
    data: list[dict[str, Any]] = (await resp.json())["data"]
    return data


# ---- item 2: sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("announce_length", [True, False], ids=["content-length", "chunked"])
async def test_an_answer_over_the_body_limit_is_502_naming_the_setting(
    client: Client, fake: FakeOpenAI, announce_length: bool
) -> None:
    fake.fault = Fault(huge=32 * 1024 * 1024, announce_length=announce_length)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert "over the limit of 65536 bytes" in error["message"]
    assert "server.max_upstream_body_bytes" in error["message"]
    # The server is fine afterwards.
    fake.reset()
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200


async def test_a_stream_line_over_the_limit_is_an_error_frame(client: Client, fake: FakeOpenAI) -> None:
    fake.fault = Fault(huge=4 * 1024 * 1024)
    resp = await client.post("/v1/chat/completions", json=STREAM)
    assert resp.status == 200
    last = orjson.loads(frames(await resp.read())[-1])
    assert "server.max_upstream_line_bytes" in last["error"]["message"]


async def test_a_long_stream_is_answered_whole_and_not_stored(
    client: Client, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.chunks = 2000  # ~140 KB of deltas against an 8 KiB store budget
    with caplog.at_level(logging.WARNING, "stackd.routing"):
        resp = await client.post("/v1/chat/completions", json=STREAM)
        raw = await resp.read()
    chunks = [orjson.loads(f) for f in frames(raw)[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.count("tok") == 2000  # the client's answer is whole
    notes = [r.getMessage() for r in caplog.records if "max_stored_completion_bytes" in r.getMessage()]
    assert len(notes) == 1 and "not stored" in notes[0]  # said once, not once per chunk
    assert await stored(client) == []


async def test_a_long_answer_is_answered_whole_and_not_stored(
    client: Client, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.chunks = 2000
    with caplog.at_level(logging.WARNING, "stackd.routing"):
        resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"].count("tok") == 2000
    assert any("max_stored_completion_bytes" in r.getMessage() for r in caplog.records)
    assert await stored(client) == []


async def test_short_completions_are_still_stored(client: Client) -> None:
    for body in (CHAT, STREAM):
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status == 200
        await resp.read()
    records = await stored(client)
    assert len(records) == 1  # both carry the fake's one id: the stream replaced the answer
    assert records[0]["choices"][0]["message"]["content"].startswith("tok0 tok1")


async def test_limits_come_from_the_server_section(fake: FakeOpenAI, make_client: Callable[..., Any]) -> None:
    # The same 100 KB answer: over the file's 64 KiB, under a raised limit.
    fake.fault = Fault(huge=100_000)
    low: Client = await make_client(fake.url)
    assert (await low.post("/v1/chat/completions", json=CHAT)).status == 502
    high: Client = await make_client(fake.url, body_limit=200_000)
    assert (await high.post("/v1/chat/completions", json=CHAT)).status == 200


# ---- deadlines -----------------------------------------------------------------------------------


async def test_a_dripping_answer_is_504_after_total_timeout(
    fake: FakeOpenAI, make_client: Callable[..., Any]
) -> None:
    client: Client = await make_client(fake.url, provider=", total_timeout: 0.5")
    fake.fault = Fault(drip=0.05)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 504


@pytest.mark.parametrize(
    ("drip_after", "setting"), [(0, "stream_first_byte_timeout"), (3, "stream_idle_timeout")]
)
async def test_a_dripping_stream_ends_with_a_timeout_frame(
    fake: FakeOpenAI, make_client: Callable[..., Any], drip_after: int, setting: str
) -> None:
    client: Client = await make_client(
        fake.url, provider=", stream_first_byte_timeout: 0.5, stream_idle_timeout: 0.5"
    )
    fake.fault = Fault(drip=0.05, drip_after=drip_after)
    resp = await client.post("/v1/chat/completions", json=STREAM)
    got = frames(await resp.read())
    assert len(got) == drip_after + 1
    assert setting in orjson.loads(got[-1])["error"]["message"]
    assert await stored(client) == []


# ---- item 4: the store never fails the answer ---------------------------------------------------


def answer(**fields: Any) -> dict[str, Any]:
    body = {
        "id": "chatcmpl-odd", "object": "chat.completion", "created": 1_700_000_000, "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(
    ("fields", "stored_id", "stored_created"),
    [
        ({"id": ...}, None, None),
        ({"id": None}, None, None),
        ({"id": ""}, None, None),
        ({"id": {"x": 1}}, None, None),
        ({"id": 42}, "42", 1_700_000_000),
        ({"created": 1_700_000_000.75}, "chatcmpl-odd", 1_700_000_000),
        ({"created": ...}, "chatcmpl-odd", None),
        ({"created": "yesterday"}, "chatcmpl-odd", None),
        ({"created": True}, "chatcmpl-odd", None),
        ({"created": -5}, "chatcmpl-odd", None),
        ({"created": 1e30}, "chatcmpl-odd", None),
    ],
    ids=["no-id", "null-id", "empty-id", "object-id", "int-id", "float-created", "no-created",
         "str-created", "bool-created", "negative-created", "huge-created"],
)
async def test_an_odd_answer_is_passed_on_and_stored_normalised(
    client: Client, fake: FakeOpenAI, fields: dict[str, Any], stored_id: str | None, stored_created: int | None
) -> None:
    body = answer(**fields)
    fake.fault = Fault(body=orjson.dumps(body))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    got = await resp.json()
    assert {k: v for k, v in got.items() if k != "model"} == {k: v for k, v in body.items() if k != "model"}
    (record,) = await stored(client)
    assert isinstance(record["id"], str) and record["id"]
    if stored_id is not None:
        assert record["id"] == stored_id
    else:
        assert record["id"].startswith("chatcmpl-")
    assert isinstance(record["created"], int)
    if stored_created is not None:
        assert record["created"] == stored_created
    assert record["choices"][0]["message"]["content"] == "hello"
    one = await client.get(f"/v1/chat/completions/{record['id']}")
    assert one.status == 200


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


@pytest.mark.parametrize(
    ("top", "stored_id"),
    [({}, None), ({"id": 7}, "7"), ({"id": "chatcmpl-s", "created": 1.5}, "chatcmpl-s")],
    ids=["no-id", "int-id", "float-created"],
)
async def test_an_odd_stream_is_passed_on_and_stored_normalised(
    client: Client, fake: FakeOpenAI, top: dict[str, Any], stored_id: str | None
) -> None:
    events = tuple(
        sse({**top, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": t}}]})
        for t in ("a", "b")
    )
    fake.fault = Fault(events=events)
    resp = await client.post("/v1/chat/completions", json=STREAM)
    assert resp.status == 200
    assert frames(await resp.read())[-1] == b"[DONE]"
    (record,) = await stored(client)
    assert record["choices"][0]["message"]["content"] == "ab"
    assert record["id"] == stored_id if stored_id else record["id"].startswith("chatcmpl-")
    assert isinstance(record["created"], int)


async def test_a_chunk_the_store_cannot_fold_is_passed_on(
    client: Client, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    events = (
        sse({"id": "c1", "choices": [{"index": 0, "delta": {"content": 5}}]}),
        sse({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"function": "nope"}]}}]}),
        sse({"id": "c1", "choices": [{"index": 0, "delta": {"content": "fine"}}]}),
    )
    fake.fault = Fault(events=events)
    with caplog.at_level(logging.WARNING, "stackd.routing"):
        resp = await client.post("/v1/chat/completions", json=STREAM)
        got = frames(await resp.read())
    assert resp.status == 200 and len(got) == 4 and got[-1] == b"[DONE]"
    assert len([r for r in caplog.records if "not stored" in r.getMessage()]) == 1
    assert await stored(client) == []


async def test_an_upstream_slow_to_answer_a_stream_is_504_before_it_began(
    fake: FakeOpenAI, make_client: Callable[..., Any]
) -> None:
    client: Client = await make_client(fake.url, provider=", stream_first_byte_timeout: 0.5")
    fake.fault = Fault(delay=3.0)
    resp = await client.post("/v1/chat/completions", json=STREAM)
    assert resp.status == 504
    assert (await resp.json())["error"]["type"]


# ---- the settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["max_upstream_body_bytes", "max_upstream_line_bytes", "max_stored_completion_bytes", "max_store_queue_bytes"],
)
def test_a_limit_below_1024_bytes_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"apis: [inference]\nserver:\n  {name}: 10\n", env={})
    assert f"$.server.{name}" in str(info.value) and "at least 1024 bytes" in str(info.value)


@pytest.mark.parametrize("name", ["total_timeout", "stream_first_byte_timeout", "stream_idle_timeout"])
@pytest.mark.parametrize("provider_type", ["remote::vllm", "remote::ollama"])
def test_a_deadline_must_be_positive(name: str, provider_type: str) -> None:
    text = f"""\
apis: [inference]
providers:
  inference:
  - provider_id: p
    provider_type: {provider_type}
    config: {{url: "http://127.0.0.1:1", {name}: 0}}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert f"$.providers.inference[0].config.{name}" in str(info.value)


async def test_tool_call_arguments_that_are_not_text_cost_only_the_record(
    client: Client, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
    events = (sse({"id": "c2", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}),)
    fake.fault = Fault(events=events)
    with caplog.at_level(logging.WARNING, "stackd.routing"):
        resp = await client.post("/v1/chat/completions", json=STREAM)
        got = frames(await resp.read())
    assert resp.status == 200 and got[-1] == b"[DONE]"
    assert orjson.loads(got[0])["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    notes = [r for r in caplog.records if "not stored" in r.getMessage()]
    assert len(notes) == 1 and notes[0].exc_info is None
    assert await stored(client) == []
