"""Issue #15: stream events forwarded as the upstream's bytes, relabelled on the bytes.

What the client reads and what the store keeps must be what the parsed path gave: each frame
parses to the upstream's event with ``model`` set to the model's identifier, the stored record
is the assembly of those events, and a bad event is the same error frame as before. Real
stackd app, the remote::vllm plugin and FakeOpenAI on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from stackd.inference_store import assemble_chat_stream
from stackd.loading import parse_config
from stackd.server import create_app
from stackd.server.sse import encode_event
from stackd.testing.fake_openai import FakeOpenAI, Fault
from stackd.upstream import SSEEvent, relabel_bytes

pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")

Client = TestClient[Any, Any]
OLD, NEW = b'"model":"fake-model"', b'"model":"chat"'


# ---- relabel on the bytes ------------------------------------------------------------------------


def test_a_compact_chunk_is_relabelled_on_its_bytes() -> None:
    raw = (b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"fake-model",'
           b'"choices":[{"index":0,"delta":{"content":"hi"}}]}')
    out = relabel_bytes(raw, OLD, NEW)
    assert out == raw.replace(OLD, NEW)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"c", "model": "fake-model","choices":[]}',  # other spacing: no match
        b'{"meta":{"model":"fake-model"},"model":"fake-model"}',  # a nested one comes first
        b'{"x":["a"],"model":"fake-model"}',  # an array opens before it
        b'{"model":"fake-model","choices":[{"model":"fake-model"}]}',  # another one follows
        b'{"model":"fake-model","content":"model"}',  # "model" again, as a value
        b'{"model":"fake-model","model":"other"}',  # a duplicate member (the last one wins)
        b'{"id":"c","choices":[]}',  # no model at all
    ],
)
def test_bytes_that_cannot_be_relabelled_safely_are_left_to_the_dict(raw: bytes) -> None:
    assert relabel_bytes(raw, OLD, NEW) is None


def test_an_escaped_lookalike_inside_a_string_is_not_a_member() -> None:
    raw = orjson.dumps({"id": 'x"model":"fake-model"', "model": "fake-model", "choices": []})
    out = relabel_bytes(raw, OLD, NEW)
    assert out is not None
    assert orjson.loads(out) == {"id": 'x"model":"fake-model"', "model": "chat", "choices": []}


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
    | st.sampled_from(["model", '"model":"fake-model"', "fake-model"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["model", "id", "choices", "x", "delta"]), children, max_size=3),
    max_leaves=12,
)


@given(before=st.dictionaries(st.sampled_from(["id", "object", "x", "model"]), _json, max_size=3),
       after=st.dictionaries(st.sampled_from(["choices", "usage", "y", "model"]), _json, max_size=3))
def test_relabelled_bytes_always_parse_to_the_relabelled_dict(before: dict[str, Any], after: dict[str, Any]) -> None:
    # Whatever surrounds the member: either the bytes say exactly what the dict says, or None.
    event = {**{k: v for k, v in before.items() if k != "model"}, "model": "fake-model",
             **{k: v for k, v in after.items() if k != "model"}}
    raw = orjson.dumps(event)
    out = relabel_bytes(raw, OLD, NEW)
    if out is not None:
        assert orjson.loads(out) == {**event, "model": "chat"}


_HEAD_EVENT = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "fake-model"}


async def _no_events() -> AsyncIterator[dict[str, Any]]:
    return
    yield


def _frames_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What Relabelled.frames writes for ``events`` (one upstream read each), parsed back."""
    from stackd.relabel import Relabelled

    relabelled = Relabelled(_no_events(), "chat", None, 1 << 20)
    out = []
    for event in events:
        raw = orjson.dumps(event)
        data = relabelled.frames([raw], [orjson.loads(raw)])
        assert data.startswith(b"data: ") and data.endswith(b"\n\n")
        out.append(orjson.loads(data[6:-2]))
    return out


@given(tails=st.lists(st.dictionaries(st.sampled_from(["choices", "usage", "y", "model"]), _json, max_size=3),
                      min_size=1, max_size=4))
def test_events_after_the_first_are_relabelled_by_their_shared_head_only_when_that_is_safe(
    tails: list[dict[str, Any]],
) -> None:
    # The first event proves the head ({"id":..,"model":"fake-model"); later ones share it, then
    # anything: a nested "model", a second top-level one, none.
    events = [{**_HEAD_EVENT, "choices": []}]
    for tail in tails:
        events.append({**_HEAD_EVENT, **{k: v for k, v in tail.items() if k != "model"}})
    assert _frames_of(events) == [{**e, "model": "chat"} for e in events]


def test_a_shared_head_followed_by_a_nested_model_is_not_replaced_twice() -> None:
    events = [{**_HEAD_EVENT, "choices": []},
              {**_HEAD_EVENT, "choices": [{"index": 0, "delta": {"model": "fake-model"}}]}]
    assert _frames_of(events)[1]["choices"][0]["delta"]["model"] == "fake-model"
    assert _frames_of(events)[1]["model"] == "chat"


def test_a_shared_head_followed_by_a_duplicate_model_member_is_serialised_from_the_dict() -> None:
    from stackd.relabel import Relabelled

    relabelled = Relabelled(_no_events(), "chat", None, 1 << 20)
    first = orjson.dumps({**_HEAD_EVENT, "choices": []})
    relabelled.frames([first], [orjson.loads(first)])
    # The same head, then a second top-level "model" (the last one wins when parsed).
    raw = first[:-1] + b',"model":"other"}'
    data = relabelled.frames([raw], [orjson.loads(raw)])
    assert data.count(b'"model"') == 1 and orjson.loads(data[6:-2])["model"] == "chat"


def test_an_event_whose_bytes_were_dropped_is_serialised() -> None:
    event = SSEEvent({"model": "chat"}, None)
    assert encode_event(event) == b'{"model":"chat"}'
    assert encode_event(SSEEvent({"model": "x"}, b'{"model": "x"}')) == b'{"model": "x"}'
    assert encode_event({"model": "plain"}) == b'{"model":"plain"}'


# ---- through stackd ------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=["fake-model", "chat"], chunks=12) as upstream:
        yield upstream


def _config(url: str, state: Path, provider_model_id: str) -> Any:
    return parse_config(f"""\
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
  provider_model_id: {provider_model_id}
server:
  max_upstream_line_bytes: 16384
""", env={})


@pytest.fixture(params=["fake-model", "chat"], ids=["relabelled", "same-name"])
async def client(request: pytest.FixtureRequest, fake: FakeOpenAI, tmp_path: Path) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(_config(fake.url, tmp_path, request.param)))) as c:
        yield c


def _frames(body: bytes) -> list[bytes]:
    return [f[6:] for f in body.split(b"\n\n") if f.startswith(b"data: ")]


def _sse(obj: dict[str, Any], *, spaced: bool = False) -> bytes:
    text = orjson.dumps(obj).decode()
    if spaced:
        text = text.replace('":', '": ').replace(",", ", ")
    return f"data: {text}\n\n".encode()


async def _upstream_frames(fake: FakeOpenAI, client: Client) -> list[bytes]:
    # What the upstream sends for the same request, read straight from it.
    async with client.session.post(f"{fake.url}/v1/chat/completions", json={
        "model": _provider_name(client), "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True},
    }) as resp:
        return [f for f in _frames(await resp.read()) if f != b"[DONE]"]


def _provider_name(client: Client) -> str:
    from stackd.server.keys import STACK

    return str(client.server.app[STACK].loaded.models[0].provider_model_id)


async def _stream(client: Client, **extra: Any) -> list[bytes]:
    resp = await client.post("/v1/chat/completions", json={
        "model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra,
    })
    assert resp.status == 200
    return _frames(await resp.read())


async def test_frames_say_what_the_parsed_path_said_and_the_record_is_the_same(
    client: Client, fake: FakeOpenAI
) -> None:
    raw = await _upstream_frames(fake, client)
    upstream = [orjson.loads(f) for f in raw]
    got = await _stream(client, stream_options={"include_usage": True})
    assert got[-1] == b"[DONE]"
    # The fast path was taken: the upstream's own bytes, only the model member changed.
    name = _provider_name(client).encode()
    assert got[:-1] == [f.replace(b'"model":"' + name + b'"', b'"model":"chat"') for f in raw]
    # Each frame: the upstream's event, every field, with the client's model name.
    assert [orjson.loads(f) for f in got[:-1]] == [{**e, "model": "chat"} for e in upstream]
    resp = await client.get("/v1/chat/completions/chatcmpl-fake")
    assert resp.status == 200
    record = await resp.json()
    # The record the parsed path stored: the assembly of the relabelled events.
    expected = assemble_chat_stream([{**e, "model": "chat"} for e in upstream])
    assert {k: record[k] for k in expected} == expected
    assert record["input_messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("spaced", [False, True], ids=["compact", "spaced"])
async def test_odd_event_bytes_still_give_the_same_frames(client: Client, fake: FakeOpenAI, spaced: bool) -> None:
    name = _provider_name(client)
    events = [
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": name,
         "choices": [{"index": 0, "delta": {"content": "é\u2028"}, "finish_reason": None}]},
        {"model": name, "id": "c1", "meta": {"model": name}, "choices": [{"index": 0, "delta": {"content": "b"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},  # no model member
    ]
    fake.fault = Fault(events=tuple(_sse(e, spaced=spaced) for e in events))
    got = await _stream(client)
    assert [orjson.loads(f) for f in got[:-1]] == [{**e, "model": "chat"} for e in events]
    # A nested member keeps the upstream's name: only the top-level one is the client's.
    assert orjson.loads(got[1])["meta"] == {"model": name}
    if name == "chat":  # nothing to relabel: the upstream's bytes go out, spacing and all
        assert got[0] == _sse(events[0], spaced=spaced)[6:-2]
        assert got[1] == _sse(events[1], spaced=spaced)[6:-2]


async def test_a_payload_with_a_carriage_return_is_never_forwarded_as_is(client: Client, fake: FakeOpenAI) -> None:
    # CR is JSON whitespace but ends an SSE line: forwarded raw, it would split the frame.
    fake.fault = Fault(events=(b'data: {"id":"c1",\r"model":"fake-model","choices":[]}\n\n',))
    resp = await client.post("/v1/chat/completions", json={
        "model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    body = await resp.read()
    assert b"\r" not in body
    assert orjson.loads(_frames(body)[0]) == {"id": "c1", "model": "chat", "choices": []}


async def test_a_malformed_event_is_the_same_error_frame(client: Client, fake: FakeOpenAI) -> None:
    good = _sse({"id": "c1", "model": "fake-model", "choices": [{"index": 0, "delta": {"content": "a"}}]})
    fake.fault = Fault(events=(good, b"data: {not json\n\n"))
    got = await _stream(client)
    assert orjson.loads(got[0])["model"] == "chat"
    assert orjson.loads(got[-1]) == {"error": {
        "message": "provider 'vllm' sent a stream event that is not JSON", "type": "upstream_error"}}


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"7", b"null"])
async def test_an_event_that_is_not_an_object_is_an_error_frame_after_the_events_before_it(
    client: Client, fake: FakeOpenAI, payload: bytes
) -> None:
    good = _sse({"id": "c1", "model": "fake-model", "choices": [{"index": 0, "delta": {"content": "a"}}]})
    fake.fault = Fault(events=(good, b"data: " + payload + b"\n\n"))
    got = await _stream(client)
    assert len(got) == 2 and orjson.loads(got[0])["model"] == "chat"
    assert orjson.loads(got[-1]) == {"error": {
        "message": "provider 'vllm' sent a stream event that is not a JSON object", "type": "upstream_error"}}


async def test_an_oversized_event_is_the_same_error_frame_after_the_events_before_it(
    client: Client, fake: FakeOpenAI
) -> None:
    good = _sse({"id": "c1", "model": "fake-model", "choices": [{"index": 0, "delta": {"content": "a"}}]})
    big = _sse({"id": "c1", "model": "fake-model", "choices": [{"index": 0, "delta": {"content": "z" * 20000}}]})
    # The good event and the start of the big one reach stackd in one read.
    fake.fault = Fault(events=(good + big,))
    got = await _stream(client)
    assert len(got) == 2 and orjson.loads(got[0])["choices"][0]["delta"]["content"] == "a"
    error = orjson.loads(got[1])["error"]
    assert "a stream line over the limit of 16384 bytes; raise server.max_upstream_line_bytes" in error["message"]
