"""Issue #15: an upstream read that is nothing but whole events is read as a whole.

``stackd.upstream._whole_events`` takes such a read with a few counts over its bytes, and
``Relabelled.frames`` relabels its frames in one replace. Neither may ever give what the line by
line path (``_events_of``, ``Relabelled._one`` per event) would not: these tests hold them to it
on reads made of good events and of everything an upstream could slip between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stackd.errors import StackdError
from stackd.json_depth import ANSWER_MAX_DEPTH
from stackd.relabel import Relabelled
from stackd.upstream import _events_of, _whole_events

LIMIT = 1 << 20
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake-model"}


def _token(text: str, **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}], **extra}


def _read(*payloads: bytes, done: bool = False) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads) + (b"data: [DONE]\n\n" if done else b"")


def _line_by_line(block: bytes) -> tuple[list[bytes | None], list[dict[str, Any]], StackdError | None, bool]:
    lines = block.split(b"\n")
    lines.pop()  # what follows the last line break is not a line yet
    return _events_of(lines, "p")


# ---- the reader --------------------------------------------------------------------------------


def test_a_read_of_whole_events_is_taken_whole() -> None:
    payloads = [orjson.dumps(_token(f"tok{i} ")) for i in range(64)]
    block = _read(*payloads, done=True)
    whole = _whole_events(block, LIMIT)
    assert whole is not None
    frames, got, events, done = whole
    assert frames == _read(*payloads) and got == payloads and done
    assert events == [orjson.loads(p) for p in payloads]
    assert _whole_events(b"data: [DONE]\n\n", LIMIT) == (b"", [], [], True)


@pytest.mark.parametrize("block", [
    b": keep-alive\n\n" + _read(b"{}"),  # a comment
    b"event: message\n" + _read(b"{}"),  # another field
    b"data:{}\n\n",  # no space
    b"data:  {}\n\n",  # two
    b"data: {} \n\n",  # a space after
    b"data: {}\r\n\r\n",  # CR LF
    b"data: {}\n\ndata: {}\n",  # an event not ended yet
    b"data: {}\n\ndata: {",  # one cut short
    b'data: {"a":1}\ndata: {"b":2}\n\n',  # one event of two data lines
    b'data: {"a":1},{"b":2}\n\n',  # two objects in one event
    b'data: {"a":[1\n\ndata: 2]}\n\n',  # one object in two events
    b'data: {"a":"x\n\ndata: y"}\n\n',  # a string across two events
    b"data: {}\n\ndata: [DONE]\n\ndata: {}\n\n",  # [DONE] before the end
    b'data: {"error":{"message":"boom"}}\n\n',  # an error event
    b'data: {"a":1}}\n\n',  # not JSON
    _read(b"{" * 200 + b"}" * 200),  # deeper than stackd answers
    _read(b'{"a":"' + b"x" * 64 + b'"}'),  # a line over the limit below
])
def test_anything_but_whole_events_is_left_to_the_line_by_line_path(block: bytes) -> None:
    assert _whole_events(block, 64) is None


def test_an_event_that_could_nest_too_deep_is_left_to_the_line_by_line_path() -> None:
    deep = b'{"a":' + b"[" * (ANSWER_MAX_DEPTH + 2) + b"]" * (ANSWER_MAX_DEPTH + 2) + b"}"
    flat = orjson.dumps(_token("x"))
    assert _whole_events(_read(flat, deep, flat), LIMIT) is None
    failure = _line_by_line(_read(flat, deep, flat))[2]
    assert failure is not None and "nested deeper" in failure.message
    # Long events that cannot nest that deep still go whole, however many brackets the read holds.
    long = orjson.dumps(_token("y" * (2 * ANSWER_MAX_DEPTH)))
    assert _whole_events(_read(*[long] * 64), LIMIT) is not None


_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.sampled_from(["model", "error", "data: {", "\n\ndata: ", '"model":"fake-model"', "}\n\n", "\r", "x"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["model", "id", "choices", "error", "usage", "data", "x"]), children, max_size=3),
    max_leaves=10,
)
_event = st.builds(lambda extra, text: {**_token(text), **extra},
                   st.dictionaries(st.sampled_from(["model", "usage", "error", "x", "choices"]), _value, max_size=2),
                   st.text(max_size=6))
# What an upstream could put between its events: lines stackd must refuse or skip, and events
# that only look like one.
_odd = st.sampled_from([
    b": ping", b"event: x", b"data:{}", b"data:  {}", b"data: {} ", b"data: [DONE]", b"data: 1", b"data: []",
    b'data: {"a":1},{"b":2}', b'data: {"a":[1', b"data: 2]}", b'data: {"a":"x', b'data: y"}', b"data: {\r}",
    b'data: {"error":{"message":"boom"}}', b"", b"data: " + b"[" * 130 + b"]" * 130,
])


@st.composite
def _reads(draw: st.DrawFn) -> bytes:
    event = _event.map(lambda e: b"data: " + orjson.dumps(e))
    if draw(st.booleans()):  # events only, as upstreams send them
        parts, separator, ended = draw(st.lists(event, min_size=1, max_size=6)), b"\n\n", True
    else:
        parts = draw(st.lists(st.one_of(event, _odd), max_size=6))
        separator, ended = draw(st.sampled_from([b"\n\n", b"\n"])), draw(st.booleans())
    block = separator.join(parts) + (separator if ended else b"")
    return block + (b"data: [DONE]\n\n" if draw(st.booleans()) else b"")


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=400)
@given(block=_reads())
def test_a_read_taken_whole_gives_what_the_line_by_line_path_gives(block: bytes) -> None:
    whole = _whole_events(block, LIMIT)
    if whole is None:
        return
    frames, payloads, events, done = whole
    slow_payloads, slow_events, failure, slow_done = _line_by_line(block)
    assert failure is None
    assert (payloads, events, done) == (slow_payloads, slow_events, slow_done)
    assert block == frames + (b"data: [DONE]\n\n" if done else b"")


@given(events=st.lists(_event, min_size=1, max_size=5))
def test_good_events_are_taken_whole_unless_one_could_be_an_error_or_too_deep(events: list[dict[str, Any]]) -> None:
    payloads = [orjson.dumps(e) for e in events]
    block = _read(*payloads)
    whole = _whole_events(block, LIMIT)
    if whole is None:
        assert b'"error"' in block or any(len(p) > 2 * ANSWER_MAX_DEPTH for p in payloads)
    else:
        assert whole[2] == events


# ---- the relabel -------------------------------------------------------------------------------


async def _no_events() -> AsyncIterator[dict[str, Any]]:
    return
    yield


class _Kept:
    body: dict[str, Any] | None = None

    def __call__(self, body: dict[str, Any], weight: int) -> None:
        self.body = body


async def _through(identifier: str, reads: list[list[dict[str, Any]]], whole: bool) -> tuple[bytes, Any, Any]:
    """The frames Relabelled writes for these reads, what it stores and the usage it saw."""
    kept = _Kept()
    relabelled = Relabelled(_no_events(), identifier, kept, LIMIT)
    out = b""
    for events in reads:
        payloads: list[bytes | None] = [orjson.dumps(e) for e in events]
        parsed = [orjson.loads(p) for p in payloads]  # type: ignore[arg-type]
        out += relabelled.frames(payloads, parsed, _read(*payloads) if whole else None)  # type: ignore[arg-type]
    usage = relabelled._usage
    await relabelled.ended()
    return out, kept.body, usage


@pytest.mark.parametrize("identifier", ["chat", "fake-model"])
async def test_a_whole_read_is_relabelled_in_one_replace_and_stored(identifier: str) -> None:
    reads = [[{**_token("", ), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}],
             [_token(f"t{i} ") for i in range(20)],
             [{**HEAD, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 21, "total_tokens": 22}}]]
    relabelled = Relabelled(_no_events(), identifier, None, LIMIT)
    payloads: list[bytes | None] = [orjson.dumps(e) for e in reads[0]]
    relabelled.frames(payloads, [orjson.loads(p) for p in payloads], _read(*payloads))  # type: ignore[arg-type]
    payloads = [orjson.dumps(e) for e in reads[1]]
    block = _read(*payloads)  # type: ignore[arg-type]
    assert relabelled._whole(block, payloads, [orjson.loads(p) for p in payloads]) is not None  # type: ignore[arg-type]
    fast, slow = await _through(identifier, reads, True), await _through(identifier, reads, False)
    assert fast == slow
    frames, body, usage = fast
    assert frames.count(f'"model":"{identifier}"'.encode()) == 22
    assert body is not None and body["model"] == identifier
    assert body["choices"][0]["message"]["content"] == "".join(f"t{i} " for i in range(20))
    assert usage == {"prompt_tokens": 1, "completion_tokens": 21, "total_tokens": 22}


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(reads=st.lists(st.lists(_event, min_size=1, max_size=4), min_size=1, max_size=3),
       identifier=st.sampled_from(["chat", "fake-model"]))
async def test_whole_reads_write_store_and_count_what_event_by_event_does(
    reads: list[list[dict[str, Any]]], identifier: str
) -> None:
    assert await _through(identifier, reads, True) == await _through(identifier, reads, False)
