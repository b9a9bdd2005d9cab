"""The store's side of a stream: chunks folded in as they pass, within a byte budget, and
records normalised so that storing never fails an answer (stackd.inference_store)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from stackd.config.stores import SqliteStoreConfig
from stackd.inference_store import InferenceStoreWriter, open_inference_store
from stackd.inference_store.assemble import ChatStreamAssembler, assemble_chat_stream
from stackd.inference_store.normalise import storable


def chunk(delta: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": delta}], **top}


def test_the_assembler_lets_go_once_over_its_budget() -> None:
    keep = ChatStreamAssembler(budget=10_000)
    added = 0
    while keep.add(chunk({"content": "x"})):
        added += 1
    assert 10 < added < 200  # one-character pieces weigh what they take, not one byte each
    assert keep.over and keep.body()["choices"] == []  # what was kept is dropped at once
    assert not keep.add(chunk({"content": "y"}))  # and nothing more is taken
    assert keep.kept <= 10_000 + 100


def test_without_a_budget_the_assembler_keeps_everything() -> None:
    chunks = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": f"t{i} "}) for i in range(5000)]
    keep = ChatStreamAssembler()
    assert all(keep.add(c) for c in chunks)
    assert keep.body() == assemble_chat_stream(chunks)


@pytest.mark.parametrize("where", ["tool_calls", "function_call"])
def test_long_arguments_in_small_pieces_are_assembled_in_linear_time(where: str) -> None:
    # 200 000 fragments of 8 characters: string += on each would copy ~160 GB.
    def delta(piece: str) -> dict[str, Any]:
        function = {"arguments": piece}
        if where == "function_call":
            return {"function_call": function}
        return {"tool_calls": [{"index": 0, "function": function}]}

    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
    keep = ChatStreamAssembler()
    keep.add(chunk({"tool_calls": [first]} if where == "tool_calls" else {"function_call": {"name": "f"}}))
    started = time.monotonic()
    for _ in range(200_000):
        keep.add(chunk(delta("abcdefgh")))
    message = keep.body()["choices"][0]["message"]
    assert time.monotonic() - started < 5.0
    call = message["tool_calls"][0]["function"] if where == "tool_calls" else message["function_call"]
    assert call["name"] == "f" and len(call["arguments"]) == 1_600_000


def test_a_stream_without_an_id_assembles_with_none_for_the_store_to_fill() -> None:
    keep = ChatStreamAssembler()
    keep.add({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    body = keep.body()
    assert body["id"] is None
    record = storable(body, "m")
    assert record["id"].startswith("chatcmpl-") and body["id"] is None  # a copy, the body untouched


def test_a_record_that_needs_no_fix_is_the_answer_itself() -> None:
    answer = {"id": "a", "created": 5, "model": "m", "choices": []}
    assert storable(answer, "m") is answer  # no copy on the hot path


@pytest.mark.parametrize("bad", [None, [], "x", 3])
def test_what_is_not_an_object_cannot_be_stored(bad: Any) -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        storable(bad, "m")


async def test_the_writer_queue_is_bounded_in_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # submit() never awaits: ten in a row all wait in the queue, as behind a database that is away.
    backend = await open_inference_store(SqliteStoreConfig(db_path=tmp_path / "s.db"))
    writer = InferenceStoreWriter(backend, max_queue_bytes=3_500)
    with caplog.at_level(logging.WARNING):
        for i in range(10):
            writer.submit({"id": f"w{i}", "created": 1, "model": "m", "choices": []}, [], 1_000)
    assert writer.queued == 3 and writer.dropped == 7
    assert "queue full" in caplog.text
    await writer.close()
    backend = await open_inference_store(SqliteStoreConfig(db_path=tmp_path / "s.db"))
    ids = [item["id"] for item in (await backend.list(order="asc"))["data"]]
    await backend.close()
    assert sorted(ids) == ["w7", "w8", "w9"]  # the newest kept, the oldest dropped
