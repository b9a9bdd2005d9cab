"""Hostile request inputs (issue #10, "request inputs"): nesting that orjson reads but cannot
write, control characters bound for upstream headers, ids that can be registered but never
fetched, bodies a browser page may send, Host names of DNS rebinding, and lists that grow
without bound. Each attack is run against the real app on a real socket.
"""

from __future__ import annotations

import io
import logging
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from stackd.errors import BadRequest, UpstreamBadResponse, quote_id
from stackd.json_depth import ORJSON_MAX_DEPTH, deeper_than
from stackd.loading import LoadedConfig, load_config, parse_config
from stackd.upstream import iter_ndjson, iter_sse, make_session, read_json, upstream_errors

Client = TestClient[Any, Any]

MSGS = [{"role": "user", "content": "hi"}]
OPENAI_POST = {
    "/v1/chat/completions": {"model": "echo-1", "messages": MSGS},
    "/v1/completions": {"model": "echo-1", "prompt": "hi"},
    "/v1/embeddings": {"model": "echo-embed", "input": "hi"},
}
ALL_POST = {
    **OPENAI_POST,
    **{"/v1/openai" + path: body for path, body in OPENAI_POST.items()},
    "/v1/inference/chat-completion": {"model_id": "echo-1", "messages": MSGS},
    "/v1/inference/completion": {"model_id": "echo-1", "content": "hi"},
    "/v1/inference/embeddings": {"model_id": "echo-embed", "contents": ["hi"]},
    "/v1/models": {"model_id": "new-model", "provider_model_id": "echo-2"},
}


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value ``depth`` levels deep, alternating objects and arrays."""
    value = leaf
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


def raw_nested(depth: int) -> bytes:
    """:func:`nested` as JSON text: orjson reads 1,024 levels but writes only 255."""
    opens = b"".join(b'{"a":' if level % 2 else b"[" for level in reversed(range(depth)))
    closes = b"".join(b"}" if level % 2 else b"]" for level in range(depth))
    return opens + b"1" + closes


def with_field(body: dict[str, Any], field: str, raw: bytes) -> bytes:
    """``body`` as JSON with ``field`` set to the JSON text ``raw``."""
    return orjson.dumps(body)[:-1] + b', "' + field.encode() + b'": ' + raw + b"}"


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == status, (resp.status, text[:500])
    assert len(text) < 4096, len(text)
    body: dict[str, Any] = orjson.loads(text)
    assert set(body) <= {"error", "errors"} and body["error"]["message"] and body["error"]["type"], body
    if status == 400:
        assert body["errors"] and all(e["loc"].startswith("$") for e in body["errors"]), body
    return body


async def post(client: Client, path: str, body: Any, **headers: str) -> Any:
    # A stream, not bytes: aiohttp warns (an error here) about sending a large bytes body at once.
    return await client.post(path, data=io.BytesIO(orjson.dumps(body)),
                             headers={"Content-Type": "application/json", **headers})


# ---- 1. nesting depth ---------------------------------------------------------------------------


def test_depth_walk_finds_the_place_and_ignores_flat_values() -> None:
    assert deeper_than({"a": [1, 2, {"b": "x" * 1000}], "c": list(range(100))}, 3) is None
    assert deeper_than({"a": [1, 2, {"b": []}]}, 3) == "$.a[2].b"
    assert deeper_than({"m": nested(300)}, 64) == "$.m.a[0].a[0].a…"
    assert deeper_than("scalar", 0) is None
    assert deeper_than(nested(64), 64) is None
    assert deeper_than(nested(65), 64) is not None


async def test_every_json_route_refuses_a_body_nested_deeper_than_the_limit(client: Client) -> None:
    for path, body in ALL_POST.items():
        for depth in (66, 300, 1000):
            resp = await client.post(path, data=with_field(body, "metadata", raw_nested(depth)),
                                     headers={"Content-Type": "application/json"})
            err = await error_of(resp, 400)
            assert "nests deeper than 64 levels" in err["error"]["message"], err
            assert "server.max_json_depth" in err["error"]["message"]
            assert err["errors"][0]["loc"].startswith("$.metadata"), err
    # Nothing was registered, and every list still answers.
    for path in ("/v1/models", "/v1/openai/v1/models", "/v1/chat/completions"):
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
        assert "new-model" not in await resp.text()


async def test_what_is_accepted_at_the_limit_can_be_listed_after_a_restart(
    serve_app: Any, echo_config: Path
) -> None:
    # The body is level 1, so metadata may nest 63 levels; the list wraps it in three more.
    deep = {"m": nested(62)}
    server = await serve_app(echo_config)
    async with TestClient(server) as c:
        resp = await post(c, "/v1/models", {"model_id": "deep", "provider_model_id": "echo-2", "metadata": deep})
        assert resp.status == 200, await resp.text()
        chat = {"model": "echo-1", "messages": [{"role": "user", "content": "x", "extra": nested(60)}]}
        assert (await post(c, "/v1/chat/completions", chat)).status == 200
    await server.close()
    server = await serve_app(echo_config)
    async with TestClient(server) as c:
        for path in ("/v1/models", "/v1/openai/v1/models", "/v1/models/deep"):
            resp = await c.get(path)
            assert resp.status == 200, await resp.text()
        listed = await (await c.get("/v1/chat/completions?limit=100")).json()
        assert listed["data"] and listed["data"][0]["input_messages"][0]["extra"] == nested(60)


async def test_max_json_depth_is_a_setting(serve_app: Any, write_config: Callable[..., Path]) -> None:
    server = await serve_app(write_config(server="  max_json_depth: 4\n"))
    async with TestClient(server) as c:
        ok = {"model": "echo-1", "messages": [{"role": "user", "content": "x"}]}  # 4 levels
        assert (await post(c, "/v1/chat/completions", ok)).status == 200
        err = await error_of(await post(c, "/v1/chat/completions", {**ok, "x": [[[[1]]]]}), 400)
        assert err["errors"] == [{"loc": "$.x[0][0][0]", "msg": "nested deeper than 4 levels"}]


def test_max_json_depth_must_stay_under_what_orjson_writes(write_config: Callable[..., Path]) -> None:
    with pytest.raises(Exception) as info:
        load_config(write_config(server="  max_json_depth: 300\n"))
    assert "max_json_depth" in str(info.value) and "2 to 200" in str(info.value)


async def test_provider_data_nested_too_deep_is_refused_at_the_header(client: Client) -> None:
    header = with_field({}, "k", raw_nested(300)).decode().replace("{, ", "{")
    resp = await post(client, "/v1/chat/completions", OPENAI_POST["/v1/chat/completions"],
                      **{"X-LlamaStack-Provider-Data": header})
    err = await error_of(resp, 400)
    assert err["errors"][0]["loc"].startswith("$.headers.X-LlamaStack-Provider-Data.k"), err


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_records_written_too_deep_by_0_1_0_do_not_break_lists(
    serve_app: Any, tmp_path: Path, echo_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve_app(echo_config)  # creates both stores
    await server.close()
    # What stackd 0.1.0 wrote: a model whose metadata nests 300 deep, a completion likewise.
    record = ('{"identifier": "old-deep", "provider_id": "echo", "provider_resource_id": "echo-2", '
              f'"metadata": {{"x": {_deep_json(300)}}}, "source": "api"}}')
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("INSERT INTO kvstore (key, value) VALUES (?, ?)", ("model:old-deep", record))
    body = '{"id": "chatcmpl-deep", "created": 1, "model": "echo-1", "object": "chat.completion", "choices": []}'
    with sqlite3.connect(tmp_path / "inference_store.db") as db:
        db.execute("INSERT INTO chat_completions (id, created, model, body, input_messages) VALUES (?, ?, ?, ?, ?)",
                   ("chatcmpl-deep", 1, "echo-1", body, f'[{{"role": "user", "content": {_deep_json(300)}}}]'))
    caplog.set_level(logging.WARNING)
    server = await serve_app(echo_config)
    async with TestClient(server) as c:
        await post(c, "/v1/chat/completions", OPENAI_POST["/v1/chat/completions"])
        for _ in range(3):
            for path in ("/v1/models", "/v1/openai/v1/models"):
                resp = await c.get(path)
                assert resp.status == 200, await resp.text()
                assert "old-deep" not in await resp.text()
            page = await (await c.get("/v1/chat/completions?order=asc")).json()
            assert [item["id"] for item in page["data"]] != [] and "chatcmpl-deep" not in str(page["data"])
        await error_of(await c.get("/v1/chat/completions/chatcmpl-deep"), 502)
        await error_of(await c.get("/v1/chat/completions/chatcmpl-deep/messages"), 502)
        # The broken model can be removed.
        assert (await c.delete("/v1/models/old-deep")).status == 200
        await error_of(await c.get("/v1/models/old-deep"), 404)
    assert caplog.text.count("ignoring model record 'model:old-deep'") == 1, caplog.text
    assert caplog.text.count("it is left out of lists") == 1, caplog.text


class DeepUpstream:
    """A real OpenAI-shaped upstream whose answers nest ``depth`` levels in ``choices``."""

    def __init__(self, depth: int) -> None:
        self.depth = depth

    def answer(self, key: str = "message") -> bytes:
        return (b'{"id": "chatcmpl-x", "object": "chat.completion", "created": 1, "model": "fake-model", '
                b'"choices": [{"index": 0, "finish_reason": "stop", "' + key.encode()
                + b'": {"role": "assistant", "content": "hi", "extra": ' + raw_nested(self.depth) + b"}}]}")

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.Response(body=self.answer(), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + self.answer("delta") + b"\n\ndata: [DONE]\n\n")
        return resp

    async def ndjson(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"ok": 1}\n' + self.answer() + b"\n")
        return resp


@pytest.fixture
async def deep_upstream() -> AsyncIterator[tuple[DeepUpstream, str]]:
    fake = DeepUpstream(200)
    app = web.Application()
    app.router.add_get("/v1/models", fake.models)
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/ndjson", fake.ndjson)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


async def test_an_upstream_answer_nested_too_deep_is_a_502(
    deep_upstream: tuple[DeepUpstream, str], vllm_config: Callable[..., LoadedConfig],
    serve_app: Any,
) -> None:
    fake, url = deep_upstream
    server = await serve_app(vllm_config(url))
    async with TestClient(server) as c:
        for depth in (200, 300):  # written back by orjson or not: neither is passed on
            fake.depth = depth
            chat = {"model": "chat", "messages": MSGS}
            err = await error_of(await post(c, "/v1/chat/completions", chat), 502)
            assert "nested deeper than 128 levels" in err["error"]["message"], err
            err = await error_of(await post(c, "/v1/inference/chat-completion", {"model_id": "chat",
                                                                                 "messages": MSGS}), 502)
            resp = await post(c, "/v1/chat/completions", {**chat, "stream": True})
            text = await resp.text()
            assert resp.status == 200 and "nested deeper than 128 levels" in text, text[:300]
        fake.depth = 100
        assert (await post(c, "/v1/chat/completions", {"model": "chat", "messages": MSGS})).status == 200
        listed = await c.get("/v1/chat/completions")
        assert listed.status == 200 and len((await listed.json())["data"]) == 1


async def test_every_upstream_reader_refuses_answers_nested_too_deep(deep_upstream: tuple[DeepUpstream, str]) -> None:
    # read_json, iter_sse and iter_ndjson: what every plugin reads upstream answers with.
    fake, url = deep_upstream
    async with make_session() as session:
        for depth, refused in ((120, False), (130, True), (600, True)):
            fake.depth = depth
            async with session.post(url + "/v1/chat/completions", json={}) as resp:
                if refused:
                    with pytest.raises(UpstreamBadResponse, match="nested deeper than 128 levels"):
                        await read_json(resp, "p")
                else:
                    await read_json(resp, "p")
            async with session.post(url + "/v1/chat/completions", json={"stream": True}) as resp:
                events = iter_sse(resp, "p")
                if refused:
                    with pytest.raises(UpstreamBadResponse, match="a stream event nested deeper"):
                        await anext(events)
                else:
                    await anext(events)
                await events.aclose()
            async with session.get(url + "/ndjson") as resp:
                lines = iter_ndjson(resp, "p")
                assert await anext(lines) == {"ok": 1}
                if refused:
                    with pytest.raises(UpstreamBadResponse, match="a stream line nested deeper"):
                        await anext(lines)
                else:
                    await anext(lines)
                await lines.aclose()


# ---- 6. control characters in provider data --------------------------------------------------


async def test_control_characters_in_provider_data_are_a_400_at_the_field(
    deep_upstream: tuple[DeepUpstream, str], vllm_config: Callable[..., LoadedConfig], serve_app: Any,
) -> None:
    fake, url = deep_upstream
    fake.depth = 1
    server = await serve_app(vllm_config(url))
    async with TestClient(server) as c:
        for bad in ("tok\r\nX-Injected: 1", "tok\n", "tok\x00", "\x7f", "a\tb"):
            for path, body in [("/v1/chat/completions", {"model": "chat", "messages": MSGS}),
                               ("/v1/inference/chat-completion", {"model_id": "chat", "messages": MSGS})]:
                # JSON escapes CR, LF and NUL in the header; the decoded value holds them.
                header = orjson.dumps({"vllm_api_token": bad, "nested": {"ok": "fine"}}).decode()
                header = header.replace("\x7f", "\\u007f")
                err = await error_of(await post(c, path, body, **{"X-LlamaStack-Provider-Data": header}), 400)
                assert err["errors"] == [{"loc": "$.headers.X-LlamaStack-Provider-Data.vllm_api_token",
                                          "msg": "contains a control character"}], err
        header = orjson.dumps({"deeper": [{"x": "a\nb"}]}).decode()
        err = await error_of(await post(c, "/v1/chat/completions", {"model": "chat", "messages": MSGS},
                                        **{"X-LlamaStack-Provider-Data": header}), 400)
        assert err["errors"][0]["loc"] == "$.headers.X-LlamaStack-Provider-Data.deeper[0].x"


async def test_a_header_value_aiohttp_refuses_to_send_is_a_400_not_a_500(
    deep_upstream: tuple[DeepUpstream, str],
) -> None:
    # The upstream layer itself, for whatever value a plugin puts in a header.
    _, url = deep_upstream
    async with make_session() as session:
        for bad in ("a\r\nX-Injected: 1", "a\x00", "a\n"):
            with pytest.raises(BadRequest) as info, upstream_errors("p", url):
                async with session.get(url + "/v1/models", headers={"Authorization": f"Bearer {bad}"}):
                    pass
            assert "control character" in info.value.message and "Bearer" not in info.value.message


def test_a_control_character_in_a_configured_token_is_a_config_error(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    pytest.importorskip("stackd_provider_vllm")
    text = f"""\
apis: [inference]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "http://127.0.0.1:9/v1", api_token: "line1\\nline2"}}
metadata_store: {{type: sqlite, db_path: {tmp_path}/registry.db}}
"""
    with pytest.raises(Exception) as info:
        parse_config(text, env={})
    assert "api_token contains a control character" in str(info.value) and "line1" not in str(info.value)


# ---- 10. resource ids ------------------------------------------------------------------------

BAD_IDS = ["", " ", "  padded", "padded ", "new\nline", "nul\x00", "tab\tin", "x" * 257, "\u0085next"]


async def test_bad_ids_are_refused_at_their_field(client: Client) -> None:
    for bad in BAD_IDS:
        for path, field, body in [
            ("/v1/models", "model_id", {"model_id": bad}),
            ("/v1/models", "provider_model_id", {"model_id": "ok", "provider_model_id": bad}),
            ("/v1/models", "provider_id", {"model_id": "ok", "provider_id": bad}),
            ("/v1/shields", "shield_id", {"shield_id": bad}),
            ("/v1/shields", "provider_shield_id", {"shield_id": "ok", "provider_shield_id": bad}),
        ]:
            err = await error_of(await post(client, path, body), 400)
            assert err["errors"][0]["loc"] == f"$.{field}", err
            assert "1 to 256 characters" in err["errors"][0]["msg"]
    models = await (await client.get("/v1/models")).json()
    assert {m["identifier"] for m in models["data"]} == {"echo-1", "meta-llama/Llama-3.2-3B", "echo-embed"}


async def test_ids_with_slashes_and_colons_up_to_256_characters_work(client: Client) -> None:
    for ident in ["org/name:tag", "a" * 256, "ünïcode/模型"]:
        resp = await post(client, "/v1/models", {"model_id": ident, "provider_model_id": "echo-2"})
        assert resp.status == 200, await resp.text()
        assert (await client.get(f"/v1/models/{ident}")).status == 200
        assert (await client.delete(f"/v1/models/{ident}")).status == 200


def test_bad_ids_in_a_config_file_are_errors(write_config: Callable[..., Path]) -> None:
    for bad in ['" x"', '"a\\nb"', '""', "x" * 300]:
        with pytest.raises(Exception) as info:
            load_config(write_config(models=f"- model_id: {bad}\n"))
        assert "$.models[0].model_id" in str(info.value) and "1 to 256 characters" in str(info.value)


async def test_ids_are_quoted_short_in_errors(client: Client) -> None:
    huge = "m" * 4_000_000
    for path, body in [("/v1/chat/completions", {"model": huge, "messages": MSGS}),
                       ("/v1/inference/chat-completion", {"model_id": huge, "messages": MSGS}),
                       ("/v1/embeddings", {"model": huge, "input": "x"})]:
        err = await error_of(await post(client, path, body), 404)
        assert "(4000000 characters)" in err["error"]["message"]
    err = await error_of(await post(client, "/v1/chat/completions", {"model": "echo-embed", "messages": MSGS}), 400)
    assert "'echo-embed'" in err["error"]["message"]
    long_id = "c" * 5000
    for path in (f"/v1/chat/completions/{long_id}", f"/v1/chat/completions/{long_id}/messages",
                 f"/v1/chat/completions?after={long_id}", f"/v1/chat/completions?model={long_id}"):
        await error_of(await client.get(path), 400)
    assert quote_id("x" * 100) == repr("x" * 64) + "… (100 characters)"
    assert quote_id("short") == "'short'"


# ---- observed: Content-Type and Host ---------------------------------------------------------


async def test_bodies_a_browser_may_send_without_asking_are_refused(client: Client) -> None:
    for ctype in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", None):
        for path, body in ALL_POST.items():
            headers = {"Content-Type": ctype} if ctype else {}
            resp = await client.post(path, data=orjson.dumps(body), headers=headers,
                                     skip_auto_headers=["Content-Type"])
            err = await error_of(resp, 415)
            assert "Content-Type: application/json" in err["error"]["message"], err
    models = await (await client.get("/v1/models")).json()
    assert "new-model" not in {m["identifier"] for m in models["data"]}


async def test_json_types_with_a_charset_are_accepted(client: Client) -> None:
    for ctype in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                  "application/vnd.api+json"):
        resp = await client.post("/v1/chat/completions", data=orjson.dumps(OPENAI_POST["/v1/chat/completions"]),
                                 headers={"Content-Type": ctype})
        assert resp.status == 200, (ctype, await resp.text())


async def _get(port: int, host: str | None, path: str = "/v1/models") -> tuple[int, bytes]:
    async with ClientSession() as s:
        headers = {"Host": host} if host is not None else {}
        async with s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
            return resp.status, await resp.read()


async def test_a_loopback_server_answers_only_loopback_host_names(
    live_app: Callable[[LoadedConfig], Awaitable[int]], echo_config: Path
) -> None:
    port = await live_app(load_config(echo_config))
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]",
                 f"[::1]:{port}", "LOCALHOST"):
        assert (await _get(port, host))[0] == 200, host
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io", "[::2]"):
        for path in ("/v1/models", "/v1/health", "/v1/chat/completions"):
            status, body = await _get(port, host, path)
            assert status == 421, (host, path, status)
            err = orjson.loads(body)
            assert "server.allowed_hosts" in err["error"]["message"] and err["error"]["type"]


async def test_allowed_hosts_setting(
    live_app: Callable[[LoadedConfig], Awaitable[int]], write_config: Callable[..., Path]
) -> None:
    def own_state(path: Path) -> Path:
        # One SQLite metadata store serves one server at a time; these run side by side.
        path.write_text(path.read_text().replace("registry.db", f"{path.stem}-registry.db"))
        return path

    port = await live_app(load_config(write_config(server="  allowed_hosts: [stackd.internal, '[::1]']\n")))
    assert (await _get(port, "stackd.internal:8321"))[0] == 200
    assert (await _get(port, "[::1]"))[0] == 200
    assert (await _get(port, "localhost"))[0] == 421
    port = await live_app(load_config(own_state(write_config(name="any.yaml", server="  allowed_hosts: ['*']\n"))))
    assert (await _get(port, "anything.example"))[0] == 200
    # Listening on every address, a server is reached under names it cannot know: any is answered.
    port = await live_app(load_config(own_state(write_config(name="wide.yaml", server="  host: 0.0.0.0\n"))))
    assert (await _get(port, "my-box.lan"))[0] == 200


def test_allowed_hosts_entries_are_checked(write_config: Callable[..., Path]) -> None:
    for bad in ("http://stackd.internal", "stackd.internal/v1", "''"):
        with pytest.raises(Exception) as info:
            load_config(write_config(server=f"  allowed_hosts: [{bad}]\n"))
        assert "$.server.allowed_hosts[0]" in str(info.value) and "without scheme or path" in str(info.value)


# ---- observed: GET /v1/models is bounded --------------------------------------------------------


async def test_registration_beyond_max_models_is_refused(serve_app: Any, write_config: Callable[..., Path]) -> None:
    server = await serve_app(write_config(server="  max_models: 5\n  max_shields: 1\n"))
    async with TestClient(server) as c:
        for i in range(2):
            assert (await post(c, "/v1/models", {"model_id": f"m{i}", "provider_model_id": "echo-2"})).status == 200
        err = await error_of(await post(c, "/v1/models", {"model_id": "m9", "provider_model_id": "echo-2"}), 400)
        assert "server.max_models" in err["error"]["message"] and err["errors"][0]["loc"] == "$.model_id"
        # Registering an existing one again updates it: no room needed.
        assert (await post(c, "/v1/models", {"model_id": "m1", "provider_model_id": "echo-1"})).status == 200
        assert (await c.delete("/v1/models/m0")).status == 200
        assert (await post(c, "/v1/models", {"model_id": "m9", "provider_model_id": "echo-2"})).status == 200
        assert len((await (await c.get("/v1/models")).json())["data"]) == 5


async def test_models_can_be_paged_with_limit_and_after(client: Client) -> None:
    whole = await (await client.get("/v1/models")).json()
    assert "has_more" not in whole  # the plain list is what both clients parse, unchanged
    ids = [m["id"] for m in whole["data"]]
    seen: list[str] = []
    after = ""
    while True:
        page = await (await client.get(f"/v1/models?limit=2{after}")).json()
        seen += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            break
        after = f"&after={page['data'][-1]['id']}"
    assert seen == ids
    for bad in ("limit=0", "limit=x", "limit=100000", "after=nope"):
        await error_of(await client.get(f"/v1/models?{bad}"), 400)


async def test_lists_stay_fresh_and_skip_re_reading_unchanged_records(client: Client, tmp_path: Path) -> None:
    # Lists read the store each time (a replica's registration shows at once) but structure
    # only records whose stored text changed; a changed record is seen changed.
    assert len((await (await client.get("/v1/models")).json())["data"]) == 3
    record = '{"identifier": "from-replica", "provider_id": "echo", "provider_resource_id": "echo-2"}'
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("INSERT INTO kvstore (key, value) VALUES (?, ?)", ("model:from-replica", record))
    listed = (await (await client.get("/v1/models")).json())["data"]
    assert [m["provider_resource_id"] for m in listed if m["id"] == "from-replica"] == ["echo-2"]
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("UPDATE kvstore SET value = ? WHERE key = ?",
                   (record.replace("echo-2", "echo-1"), "model:from-replica"))
    listed = (await (await client.get("/v1/models")).json())["data"]
    assert [m["provider_resource_id"] for m in listed if m["id"] == "from-replica"] == ["echo-1"]
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("DELETE FROM kvstore WHERE key = ?", ("model:from-replica",))
    assert len((await (await client.get("/v1/models")).json())["data"]) == 3
    assert ORJSON_MAX_DEPTH == 255


def _status_for_host(port: int, host: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(("listen", "evil_status"), [("127.0.0.1", 421), ("0.0.0.0", 200)])
def test_stackd_serve_guards_hosts_by_the_address_it_listens_on(
    stackd_serve: Callable[..., Any], write_config: Callable[..., Path], listen: str, evil_status: int
) -> None:
    # --host decides, not server.host: the config says loopback, the flag may open it up.
    config = write_config()
    proc = stackd_serve(str(config), "--host", listen, "--port", "0")
    port = int(proc.wait_serving().rsplit(":", 1)[1])
    assert _status_for_host(port, f"localhost:{port}") == 200
    assert _status_for_host(port, "evil.example") == evil_status
    assert proc.stop() == 0


@given(st.recursive(st.none() | st.integers(-(2**53), 2**53) | st.text(alphabet="[]{}\",:ab", max_size=4),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=2), c, max_size=3),
                    max_leaves=40),
       st.integers(1, 12))
def test_the_byte_test_never_spares_a_value_that_nests_too_deep(value: Any, limit: int) -> None:
    """may_nest_deeper is a shortcut before the walk: whenever it says no, the walk finds nothing."""
    from stackd.json_depth import may_nest_deeper

    if deeper_than(value, limit) is not None:
        assert may_nest_deeper(orjson.dumps(value), limit)
