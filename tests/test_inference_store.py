"""Stored chat completions against real databases: SQLite in tmp_path, and a throwaway
PostgreSQL cluster started from the Debian binaries for this test session."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from blockbuster import blockbuster_ctx

from stackd.config.stores import PostgresStoreConfig, RedisStoreConfig, SqliteStoreConfig, StoreConfig
from stackd.convert import Secret, structure
from stackd.errors import BadRequest, NotFound, UpstreamUnavailable
from stackd.inference_store import (
    InferenceStore,
    InferenceStoreWriter,
    RejectedData,
    assemble_chat_stream,
    open_inference_store,
)
from stackd.inference_store.api import StoredCompletion

# ---------------------------------------------------------------- fixtures and data


@pytest.fixture(autouse=True)
def no_blocking_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any test in which the store blocks the event loop (sync file or socket calls)."""
    # Autouse fixtures come first; the server is started (blocking, as it may) before watching.
    for name in ("pg_server", "store_config"):
        if name in request.fixturenames:
            request.getfixturevalue(name)
    with blockbuster_ctx(["stackd"]) as bb:
        # asyncpg looks for client certificates in ~/.postgresql each time it opens a pool
        # connection (sslmode "prefer"): a few stat calls, outside our control, allowed here.
        for function in bb.functions.values():
            function.can_block_in(
                "asyncpg/connect_utils.py", ["_dot_postgresql_path", "_parse_connect_dsn_and_args"]
            )
        yield


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if request.param == "sqlite":
        return SqliteStoreConfig(db_path=tmp_path / "nested" / "dir" / "store.db")
    server: Any = request.getfixturevalue("pg_server")
    # A table per test keeps tests apart without a database per test.
    return server.config(table_name=f"cc_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def store(store_config: StoreConfig) -> AsyncIterator[InferenceStore]:
    s = await open_inference_store(store_config)
    try:
        yield s
    finally:
        await s.close()


def completion(cid: str, created: int = 1_700_000_000, model: str = "m1", text: str = "hi") -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


INPUTS = [
    {"role": "system", "content": "be brief"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "look: "},
            {"type": "image_url", "image_url": {"url": "data:x"}},
            {"type": "text", "text": "what?"},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
    {"role": "user", "content": "thanks", "name": "ann"},
]


async def page_through(s: Any, limit: int, **kw: Any) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = await s.list(after=after, limit=limit, **kw)
        assert page["object"] == "list"
        assert len(page["data"]) <= limit
        ids += [item["id"] for item in page["data"]]
        if page["data"]:
            assert page["first_id"] == page["data"][0]["id"]
            assert page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            return ids
        assert len(page["data"]) == limit
        after = page["last_id"]


# ---------------------------------------------------------------- the store


async def test_get_returns_the_whole_body_with_its_inputs(store: InferenceStore) -> None:
    body = completion("chatcmpl-1", text="héllo ✓")
    await store.store(body, INPUTS)
    item = await store.get("chatcmpl-1")
    assert item == {**body, "input_messages": INPUTS}
    assert list(item)[:2] == ["id", "object"]  # stored as written, keys in order


async def test_get_unknown_id_is_not_found(store: InferenceStore) -> None:
    with pytest.raises(NotFound) as info:
        await store.get("chatcmpl-nope")
    assert info.value.status == 404
    assert "'chatcmpl-nope' not found" in info.value.message
    assert "GET /v1/chat/completions" in info.value.message


async def test_same_id_replaces(store: InferenceStore) -> None:
    await store.store(completion("a", text="one"), INPUTS[:1])
    await store.store(completion("a", text="two"), INPUTS[:2])
    item = await store.get("a")
    assert item["choices"][0]["message"]["content"] == "two"
    assert item["input_messages"] == INPUTS[:2]
    assert [i["id"] for i in (await store.list())["data"]] == ["a"]


async def test_empty_list(store: InferenceStore) -> None:
    assert await store.list() == {
        "object": "list",
        "data": [],
        "has_more": False,
        "first_id": "",
        "last_id": "",
    }


async def test_list_orders_by_created_then_id_and_pages_stably(store: InferenceStore) -> None:
    # Several completions share a second: the id breaks the tie, so no page repeats or skips one.
    items = [completion(f"c{i:02d}", created=1000 + i // 4) for i in range(25)]
    await store.store_many([(c, INPUTS[:1]) for c in reversed(items)])
    expected_asc = [c["id"] for c in items]

    first = await store.list()
    assert len(first["data"]) == 20  # the default limit
    assert first["has_more"] is True
    assert [i["id"] for i in first["data"]] == expected_asc[::-1][:20]
    assert first["data"][0]["input_messages"] == INPUTS[:1]

    for limit in (1, 4, 7, 25, 100):
        assert await page_through(store, limit) == expected_asc[::-1]
        assert await page_through(store, limit, order="asc") == expected_asc

    last = await store.list(after="c05", order="asc", limit=19)
    assert [i["id"] for i in last["data"]] == expected_asc[6:]
    assert last["has_more"] is False


async def test_list_model_filter(store: InferenceStore) -> None:
    for i in range(12):
        await store.store(
            completion(f"c{i:02d}", created=2000 + i, model="big" if i % 3 == 0 else "small"), []
        )
    assert await page_through(store, 2, model="big") == ["c09", "c06", "c03", "c00"]
    assert await page_through(store, 3, model="small", order="asc") == [
        f"c{i:02d}" for i in range(12) if i % 3
    ]
    # The cursor may come from an unfiltered page.
    page = await store.list(after="c05", model="big", order="asc")
    assert [i["id"] for i in page["data"]] == ["c06", "c09"]
    assert (await store.list(model="none"))["data"] == []


@pytest.mark.parametrize(
    ("kw", "loc"),
    [
        ({"order": "newest"}, "$.query.order"),
        ({"order": None}, "$.query.order"),
        ({"limit": 0}, "$.query.limit"),
        ({"limit": 1001}, "$.query.limit"),
        ({"limit": "5"}, "$.query.limit"),
        ({"after": "chatcmpl-gone"}, "$.query.after"),
    ],
)
async def test_list_bad_query(store: InferenceStore, kw: dict[str, Any], loc: str) -> None:
    await store.store(completion("x"), [])
    with pytest.raises(BadRequest) as info:
        await store.list(**kw)
    assert [e.loc for e in info.value.errors] == [loc]
    assert info.value.status == 400
    assert "use" in info.value.message or "pass the last_id" in info.value.message


async def test_messages_shape_and_paging(store: InferenceStore) -> None:
    await store.store(completion("chatcmpl-m"), INPUTS)
    page = await store.messages("chatcmpl-m")
    assert page["object"] == "list"
    assert page["has_more"] is False
    assert page["first_id"] == "chatcmpl-m-0"
    assert page["last_id"] == "chatcmpl-m-4"
    data = page["data"]
    assert [m["id"] for m in data] == [f"chatcmpl-m-{i}" for i in range(5)]
    assert data[0] == {
        "id": "chatcmpl-m-0",
        "role": "system",
        "content": "be brief",
        "content_parts": None,
        "name": None,
    }
    assert data[1]["content"] == "look: what?"  # text of the parts; the parts themselves beside it
    assert data[1]["content_parts"] == INPUTS[1]["content"]
    assert data[2]["tool_calls"] == INPUTS[2]["tool_calls"]
    assert data[3]["tool_call_id"] == "c1"
    assert data[4]["name"] == "ann"

    desc = await store.messages("chatcmpl-m", order="desc", limit=2)
    assert [m["id"] for m in desc["data"]] == ["chatcmpl-m-4", "chatcmpl-m-3"]
    assert desc["has_more"] is True
    rest = await store.messages("chatcmpl-m", order="desc", after=desc["last_id"], limit=2)
    assert [m["id"] for m in rest["data"]] == ["chatcmpl-m-2", "chatcmpl-m-1"]
    tail = await store.messages("chatcmpl-m", order="desc", after=rest["last_id"], limit=2)
    assert [m["id"] for m in tail["data"]] == ["chatcmpl-m-0"]
    assert tail["has_more"] is False

    with pytest.raises(NotFound):
        await store.messages("chatcmpl-unknown")
    with pytest.raises(BadRequest) as info:
        await store.messages("chatcmpl-m", after="chatcmpl-x-1")
    assert info.value.errors[0].loc == "$.query.after"
    with pytest.raises(BadRequest) as info:
        await store.messages("chatcmpl-m", order="up")
    assert info.value.errors[0].loc == "$.query.order"

    await store.store(completion("chatcmpl-empty"), [])
    assert await store.messages("chatcmpl-empty") == {
        "object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None,
    }  # fmt: skip


async def test_many_concurrent_stores_and_reads(store: InferenceStore) -> None:
    n = 200

    async def one(i: int) -> None:
        await store.store(completion(f"k{i:03d}", created=3000 + i % 7), INPUTS[:1])
        await store.list(limit=5)

    await asyncio.gather(*(one(i) for i in range(n)))
    ids = await page_through(store, 50, order="asc")
    assert sorted(ids) == [f"k{i:03d}" for i in range(n)]
    assert len(set(ids)) == n


async def test_bad_bodies_are_refused_before_writing(store: InferenceStore) -> None:
    with pytest.raises(ValueError, match="'created' must be an integer"):
        await store.store({"id": "z", "created": "now", "model": "m", "choices": []}, [])
    with pytest.raises(ValueError, match="non-empty string 'id'"):
        await store.store({"created": 1, "model": "m"}, [])
    assert (await store.list())["data"] == []


# ---------------------------------------------------------------- opening


async def test_sqlite_creates_parent_dirs_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.db"
    s = await open_inference_store(SqliteStoreConfig(db_path=path))
    await s.store(completion("p1"), INPUTS)
    await s.close()
    assert path.exists()
    s = await open_inference_store(SqliteStoreConfig(db_path=path))
    try:
        assert (await s.get("p1"))["input_messages"] == INPUTS
        assert "store.db" in repr(s)
    finally:
        await s.close()


async def test_sqlite_unusable_path_says_where(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a dir")
    with pytest.raises(UpstreamUnavailable) as info:
        await open_inference_store(SqliteStoreConfig(db_path=tmp_path / "file" / "store.db"))
    assert "inference_store.db_path" in info.value.message
    assert str(tmp_path / "file" / "store.db") in info.value.message


async def test_config_from_yaml_shape_opens_the_right_backend(tmp_path: Path) -> None:
    config = structure(
        {"type": "sqlite", "db_path": str(tmp_path / "s.db")}, StoreConfig, "$.inference_store"
    )
    s = await open_inference_store(config)
    await s.close()
    with pytest.raises(BadRequest) as info:
        await open_inference_store(RedisStoreConfig())
    assert info.value.errors[0].loc == "$.inference_store.type"


async def test_postgres_wrong_password_is_503_without_the_password(pg_server: Any) -> None:
    config = attrs.evolve(pg_server.config(), password=Secret("wrong-secret-xyz"))
    with pytest.raises(UpstreamUnavailable) as info:
        await open_inference_store(config)
    message = info.value.message
    assert "stackd@127.0.0.1" in message
    assert "wrong-secret-xyz" not in message
    assert pg_server.password not in message
    assert "password" in message  # names what to check
    assert "wrong-secret-xyz" not in repr(config)


async def test_postgres_unreachable_is_503(port: Callable[[], int]) -> None:
    config = PostgresStoreConfig(host="127.0.0.1", port=port(), password=Secret("p"))
    with pytest.raises(UpstreamUnavailable, match="cannot connect to the inference store"):
        await open_inference_store(config)


async def test_postgres_bad_table_name(pg_server: Any) -> None:
    with pytest.raises(BadRequest) as info:
        await open_inference_store(pg_server.config(table_name="x; drop table y"))
    assert info.value.errors[0].loc == "$.inference_store.table_name"


async def test_postgres_refused_row_is_rejected_data(pg_server: Any) -> None:
    s = await open_inference_store(pg_server.config(table_name=f"cc_{uuid.uuid4().hex[:12]}"))
    try:
        with pytest.raises(RejectedData):
            await s.store(completion("bad\x00id"), [])
    finally:
        await s.close()


# ---------------------------------------------------------------- the writer


class CountingStore:
    """Passes every call to a real store and records the writes (to count transactions)."""

    def __init__(self, inner: InferenceStore) -> None:
        self.inner = inner
        self.batches: list[int] = []

    async def store(self, c: dict[str, Any], m: list[dict[str, Any]]) -> None:
        await self.store_many([(c, m)])

    async def store_many(self, items: Sequence[StoredCompletion]) -> None:
        self.batches.append(len(items))
        await self.inner.store_many(items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FlakyStore(CountingStore):
    """A real store behind a database that is down for the first ``outage`` writes."""

    def __init__(self, inner: InferenceStore, outage: int) -> None:
        super().__init__(inner)
        self.outage = outage

    async def store_many(self, items: Sequence[StoredCompletion]) -> None:
        self.batches.append(len(items))
        if self.outage > 0:
            self.outage -= 1
            raise UpstreamUnavailable("the database is down (test)")
        await self.inner.store_many(items)


async def test_writer_batches_and_drains_on_aclose(store_config: StoreConfig) -> None:
    backend = CountingStore(await open_inference_store(store_config))
    writer = InferenceStoreWriter(backend, max_batch=100)
    n = 1000
    for i in range(n):
        writer.submit(completion(f"w{i:04d}", created=5000 + i), INPUTS[:1])  # never awaits
    assert writer.queued == n
    await writer.aclose()
    assert writer.queued == 0
    assert writer.written == n
    assert sum(backend.batches) == n
    assert max(backend.batches) == 100 and len(backend.batches) == 10  # one transaction per batch
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(completion("late"), [])
    await backend.inner.close()

    reopened = await open_inference_store(store_config)
    try:
        assert await page_through(reopened, 200, order="asc") == [f"w{i:04d}" for i in range(n)]
    finally:
        await reopened.close()


async def test_writer_reads_see_queued_writes(store: InferenceStore) -> None:
    writer = InferenceStoreWriter(store)
    assert isinstance(writer, InferenceStore)  # the server can use it in place of the store
    assert isinstance(store, InferenceStore)
    writer.submit(completion("fresh"), INPUTS)
    assert (await writer.get("fresh"))["id"] == "fresh"
    writer.submit(completion("fresh2", created=1_800_000_000), INPUTS)
    assert (await writer.list(limit=1))["data"][0]["id"] == "fresh2"
    writer.submit(completion("fresh3"), INPUTS)
    assert len((await writer.messages("fresh3"))["data"]) == len(INPUTS)
    with pytest.raises(BadRequest):
        await writer.list(order="sideways")
    await writer.aclose()


async def test_writer_concurrent_submitters(store: InferenceStore) -> None:
    writer = InferenceStoreWriter(store, max_batch=64)

    async def handler(i: int) -> None:
        # What a request handler does: store, then answer at once.
        await writer.store(completion(f"h{i:03d}", created=6000 + i % 3), [])
        await asyncio.sleep(0)

    await asyncio.gather(*(handler(i) for i in range(300)))
    await writer.flush()
    assert writer.written == 300
    assert len(await page_through(store, 100)) == 300
    await writer.aclose()


async def test_writer_full_queue_drops_the_oldest(tmp_path: Path) -> None:
    backend = await open_inference_store(SqliteStoreConfig(db_path=tmp_path / "s.db"))
    writer = InferenceStoreWriter(backend, max_queue=5)
    for i in range(20):
        writer.submit(completion(f"q{i:02d}", created=7000 + i), [])
    assert writer.dropped == 15
    assert writer.queued == 5
    await writer.close()  # drains, then closes the store
    backend = await open_inference_store(SqliteStoreConfig(db_path=tmp_path / "s.db"))
    try:
        assert await page_through(backend, 10, order="asc") == [f"q{i:02d}" for i in range(15, 20)]
    finally:
        await backend.close()


async def test_writer_keeps_batches_through_an_outage(tmp_path: Path) -> None:
    backend = FlakyStore(await open_inference_store(SqliteStoreConfig(db_path=tmp_path / "s.db")), outage=3)
    writer = InferenceStoreWriter(backend, retry_delay=0.01)
    for i in range(10):
        writer.submit(completion(f"o{i}"), [])
    await writer.aclose()
    assert backend.batches == [10, 10, 10, 10]
    assert writer.written == 10 and writer.failed == 0
    assert len((await backend.inner.list())["data"]) == 10
    await backend.inner.close()


async def test_writer_gives_up_at_shutdown_when_the_database_stays_down(tmp_path: Path) -> None:
    backend = FlakyStore(
        await open_inference_store(SqliteStoreConfig(db_path=tmp_path / "s.db")), outage=10**9
    )
    writer = InferenceStoreWriter(backend, retry_delay=0.01, max_retry_delay=0.05)
    for i in range(7):
        writer.submit(completion(f"d{i}"), [])
    loop = asyncio.get_running_loop()
    started = loop.time()
    await writer.aclose(give_up_after=0.3)
    assert loop.time() - started < 2
    assert writer.failed == 7
    await asyncio.wait_for(writer.flush(), 0.1)  # nobody waits forever on abandoned writes
    await backend.inner.close()


async def test_writer_isolates_a_refused_row(pg_server: Any) -> None:
    backend = await open_inference_store(pg_server.config(table_name=f"cc_{uuid.uuid4().hex[:12]}"))
    writer = InferenceStoreWriter(backend)
    for i in range(9):
        writer.submit(completion(f"ok{i}"), [])
        if i == 4:
            writer.submit(completion("bad\x00"), [])
    await writer.aclose()
    assert writer.written == 9
    assert writer.failed == 1
    assert len(await page_through(backend, 50)) == 9
    await backend.close()


# ---------------------------------------------------------------- assemble_chat_stream


def chunk(choices: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-s",
        "object": "chat.completion.chunk",
        "created": 1_700_000_123,
        "model": "m1",
        "system_fingerprint": "fp_9",
        "choices": choices,
        **top,
    }


def delta(index: int = 0, finish: str | None = None, logprobs: Any = None, **d: Any) -> dict[str, Any]:
    return {"index": index, "delta": d, "logprobs": logprobs, "finish_reason": finish}


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_assemble_text_stream() -> None:
    lp = [{"token": t, "logprob": -0.1, "bytes": None, "top_logprobs": []} for t in ("Hel", "lo", "!")]
    chunks = [
        chunk([delta(role="assistant", content="")]),
        chunk([delta(content="Hel", logprobs={"content": lp[:1], "refusal": None})]),
        chunk([delta(content="lo", logprobs={"content": lp[1:2]})]),
        chunk([delta(content="!", logprobs={"content": lp[2:]})]),
        chunk([delta(finish="stop")]),
        chunk([], usage=USAGE),
    ]
    assert assemble_chat_stream(chunks) == {
        "id": "chatcmpl-s",
        "object": "chat.completion",
        "created": 1_700_000_123,
        "model": "m1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": {"content": lp},
                "finish_reason": "stop",
            }
        ],
        "system_fingerprint": "fp_9",
        "usage": USAGE,
    }


def test_assemble_multi_choice_interleaved() -> None:
    chunks = [
        chunk([delta(0, role="assistant"), delta(1, role="assistant")]),
        chunk([delta(1, content="B1 ")]),
        chunk([delta(0, content="A1 ")]),
        chunk([delta(0, content="A2"), delta(1, content="B2")]),
        chunk([delta(1, finish="length")]),
        chunk([delta(0, finish="stop")]),
    ]
    body = assemble_chat_stream(chunks)
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "A1 A2", "stop"),
        (1, "B1 B2", "length"),
    ]
    assert "usage" not in body  # the stream did not ask for usage
    assert all(c["logprobs"] is None for c in body["choices"])


def test_assemble_split_tool_call_arguments() -> None:
    def call(index: int, **kw: Any) -> dict[str, Any]:
        return {"index": index, **kw}

    chunks = [
        chunk([delta(role="assistant", content=None)]),
        chunk(
            [
                delta(
                    tool_calls=[
                        call(0, id="call_a", type="function", function={"name": "weather", "arguments": ""})
                    ]
                )
            ]
        ),
        chunk([delta(tool_calls=[call(0, function={"arguments": '{"ci'})])]),
        chunk(
            [
                delta(
                    tool_calls=[
                        call(1, id="call_b", type="function", function={"name": "time", "arguments": '{"tz"'})
                    ]
                )
            ]
        ),
        chunk([delta(tool_calls=[call(0, function={"arguments": 'ty": "Paris"}'})])]),
        chunk([delta(tool_calls=[call(1, function={"arguments": ': "CET"}'})])]),
        chunk([delta(finish="tool_calls")], usage=USAGE),
    ]
    body = assemble_chat_stream(chunks)
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": '{"tz": "CET"}'}},
        ],
    }
    assert body["usage"] == USAGE


def test_assemble_tool_calls_without_index_and_whole_calls() -> None:
    # Ollama sends each call whole in one chunk, without "index".
    chunks = [
        chunk(
            [
                delta(
                    role="assistant",
                    content="",
                    tool_calls=[{"id": "c1", "function": {"name": "a", "arguments": "{}"}}],
                )
            ]
        ),
        chunk([delta(tool_calls=[{"id": "c2", "function": {"name": "b", "arguments": '{"x":1}'}}])]),
        chunk([delta(finish="tool_calls")]),
    ]
    calls = assemble_chat_stream(chunks)["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("c1", "function", "a", "{}"),
        ("c2", "function", "b", '{"x":1}'),
    ]


def test_assemble_reasoning_refusal_and_errors() -> None:
    chunks = [
        chunk([delta(role="assistant", reasoning_content="think ")], system_fingerprint=None),
        chunk([delta(reasoning_content="hard")]),
        chunk([delta(refusal="I can't")]),
        chunk([delta(finish="stop")]),
    ]
    body = assemble_chat_stream(chunks)
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] == "think hard"
    assert message["refusal"] == "I can't"
    assert message["content"] is None
    assert body["system_fingerprint"] == "fp_9"  # taken from the first chunk that has one
    with pytest.raises(ValueError, match="no chunk"):
        assemble_chat_stream([])


async def test_assembled_stream_round_trips_through_the_store(store: InferenceStore) -> None:
    chunks = [chunk([delta(role="assistant", content="a")]), chunk([delta(content="b", finish="stop")])]
    body = assemble_chat_stream(chunks)
    await store.store(body, INPUTS[:1])
    assert (await store.get("chatcmpl-s"))["choices"][0]["message"]["content"] == "ab"
