"""stackd.client against the real app in-process: every method, streams, errors, retry, auth."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from stackd.apis.models import Model, Shield
from stackd.apis.native.types import SamplingParams, SystemMessage, UserMessage
from stackd.apis.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatStreamChunk,
    Completion,
    CompletionStreamChunk,
    TextDelta,
)
from stackd.client import (
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InternalServerError,
    InvalidResponse,
    NotFound,
    NotImplementedByServer,
    PayloadTooLarge,
    QuotaExceeded,
    Retry,
    ServiceUnavailable,
    StackClient,
    StackClientError,
    StackVersionWarning,
    Unauthorized,
    UpstreamError,
)
from stackd.loading import LoadedConfig, load_config
from stackd.testing.fake_openai import FakeOpenAI, Fault, llama_guard
from stackd.testing.local_server import local_server

__all__: list[str] = []

TOKEN = "sk-client-test-0123456789abcdef"
ServeApp = Callable[..., Awaitable[TestServer]]
USER = [{"role": "user", "content": "one two three"}]


def base_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def client(serve_app: ServeApp, echo_config: Path) -> AsyncIterator[StackClient]:
    async with StackClient(base_of(await serve_app(echo_config))) as c:
        yield c


# ---- every method ---------------------------------------------------------------------------


async def test_meta(client: StackClient, secret: str) -> None:
    assert (await client.health()).status == "OK"
    assert (await client.version()).version == client.server_version == "0.1.0"
    providers = await client.list_providers()
    assert [(p.provider_id, p.provider_type, p.health.status) for p in providers] == [("echo", "inline::echo", "OK")]
    assert providers[0].config["api_key"] == "********" and secret not in repr(providers)
    # The same provider; checked_at is when its health was checked, which a second check (the readiness
    # result no longer fresh on a loaded machine) moves by a millisecond or more.
    one = await client.get_provider("echo")
    assert attrs.evolve(one, health=attrs.evolve(one.health, checked_at=None)) == attrs.evolve(
        providers[0], health=attrs.evolve(providers[0].health, checked_at=None))
    assert one.health.checked_at is not None and providers[0].health.checked_at is not None
    routes = await client.list_routes()
    chat = [r for r in routes if r.route == "/v1/chat/completions" and r.method == "POST"]
    assert chat and chat[0].provider_types == ["inline::echo"]


async def test_models(client: StackClient) -> None:
    models = await client.list_models()
    assert all(isinstance(m, Model) for m in models)
    assert {m.identifier for m in models} == {"echo-1", "meta-llama/Llama-3.2-3B", "echo-embed"}
    got = await client.get_model("meta-llama/Llama-3.2-3B")  # a '/' in the id stays in the path
    assert (got.provider_id, got.provider_resource_id) == ("echo", "meta-llama/Llama-3.2-3B")
    embed = await client.get_model("echo-embed")
    assert embed.model_type == "embedding" and embed.metadata == {"embedding_dimension": 8}
    made = await client.register_model("my model?#%", provider_model_id="echo-2", provider_id="echo",
                                       metadata={"note": "x"})
    assert (made.identifier, made.provider_resource_id, made.metadata) == ("my model?#%", "echo-2", {"note": "x"})
    assert await client.get_model("my model?#%") == made
    await client.unregister_model("my model?#%")
    with pytest.raises(NotFound):
        await client.get_model("my model?#%")


async def test_shields_and_safety(serve_app: ServeApp, tmp_path: Path) -> None:
    async with FakeOpenAI(models=["guard-model"], reply=llama_guard({"bomb": "S1,S9"})) as fake:
        path = tmp_path / "guarded.yaml"
        path.write_text(f"""\
apis: [inference, safety]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "{fake.url}/v1"}}
  safety:
  - provider_id: llama-guard
    provider_type: inline::llama-guard
    config: {{}}
metadata_store: {{type: sqlite, db_path: {tmp_path}/registry.db}}
inference_store: {{type: sqlite, db_path: {tmp_path}/store.db}}
models:
- model_id: meta-llama/Llama-Guard-3-1B
  provider_model_id: guard-model
""")
        async with StackClient(base_of(await serve_app(path))) as c:
            assert await c.list_shields() == []
            shield = await c.register_shield("guard", provider_shield_id="meta-llama/Llama-Guard-3-1B",
                                             provider_id="llama-guard", params={"k": 1})
            assert isinstance(shield, Shield)
            assert (shield.identifier, shield.provider_id, shield.params) == ("guard", "llama-guard", {"k": 1})
            assert await c.list_shields() == [shield]
            assert await c.get_shield("guard") == shield
            assert (await c.run_shield("guard", USER)).violation is None
            verdict = await c.run_shield("guard", [{"role": "user", "content": "how to build a bomb"}])
            assert verdict.violation is not None and verdict.violation.violation_level == "error"
            assert verdict.violation.metadata["violation_type"] == "S1,S9"
            moderation = await c.moderations(["hello", "a bomb"], model="guard")
            assert [r.flagged for r in moderation.results] == [False, True]
            assert moderation.results[1].categories["violence"] and moderation.model == "guard"
            await c.unregister_shield("guard")
            with pytest.raises(NotFound):
                await c.get_shield("guard")


async def test_native_inference(client: StackClient) -> None:
    answer = await client.chat_completion("echo-1", USER, sampling_params={"max_tokens": 2})
    assert answer.completion_message.content == "one two"
    assert answer.completion_message.stop_reason == "out_of_tokens"
    assert answer.metrics is not None and answer.metrics[1].value == 2

    # The request classes of stackd.apis.native.types go as they are.
    typed = await client.chat_completion("echo-1", [SystemMessage("be brief"), UserMessage("four five six")],
                                         sampling_params=SamplingParams(max_tokens=2))
    assert typed.completion_message.content == "four five"

    stream = await client.chat_completion("echo-1", USER, stream=True)
    async with stream:
        chunks = [c async for c in stream]
    assert all(isinstance(c, ChatStreamChunk) for c in chunks)
    assert [c.event.event_type for c in chunks] == ["start", "progress", "progress", "progress", "complete"]
    assert "".join(c.event.delta.text for c in chunks if isinstance(c.event.delta, TextDelta)) == "one two three"
    assert chunks[-1].event.stop_reason == "end_of_turn"

    done = await client.completion("echo-1", "a b c")
    assert (done.content, done.stop_reason) == ("a b c", "end_of_turn")
    pieces = [c async for c in await client.completion("echo-1", "a b c", stream=True)]
    assert all(isinstance(c, CompletionStreamChunk) for c in pieces)
    assert "".join(c.delta for c in pieces) == "a b c" and pieces[-1].stop_reason == "end_of_turn"

    vectors = await client.embeddings("echo-embed", ["x", "y"])
    assert len(vectors.embeddings) == 2 and all(len(v) == 8 for v in vectors.embeddings)
    assert (await client.embeddings("echo-embed", ["x"], output_dimension=4)).embeddings[0] == vectors.embeddings[0][:4]


async def test_openai_inference_and_stored_completions(client: StackClient) -> None:
    answer = await client.openai_chat("echo-1", USER, max_tokens=5)
    assert isinstance(answer, ChatCompletion)
    assert answer.choices[0].message.content == "one two three" and answer.usage is not None

    stream = await client.openai_chat("echo-1", [{"role": "user", "content": "four five"}], stream=True,
                                      stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "four five"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2

    text = await client.openai_completion("echo-1", "six seven")
    assert isinstance(text, Completion) and text.choices[0].text == "six seven"
    parts = [c async for c in await client.openai_completion("echo-1", "six seven", stream=True)]
    assert "".join(p.choices[0].text for p in parts) == "six seven"

    vectors = await client.openai_embeddings("echo-embed", ["x", "y"], dimensions=4)
    assert [e.index for e in vectors.data] == [0, 1] and len(vectors.data[0].embedding) == 4

    # Stored completions: the store writes in the background, so wait for both to land.
    deadline = time.monotonic() + 30
    while len((page := await client.list_chat_completions()).data) < 2:
        assert time.monotonic() < deadline, page
        await asyncio.sleep(0.05)
    first = await client.list_chat_completions(limit=1, order="asc")
    assert first.has_more and first.data[0].input_messages == USER
    rest = await client.list_chat_completions(after=first.last_id, limit=10, order="asc", model="echo-1")
    assert not rest.has_more and len(rest.data) == 1
    stored = await client.get_chat_completion(first.data[0].id)
    assert stored.choices[0].message.content == "one two three"
    messages = await client.list_chat_completion_messages(stored.id)
    assert [(m.role, m.content) for m in messages.data] == [("user", "one two three")]
    assert messages.data[0].id == f"{stored.id}-0"
    with pytest.raises(NotFound):
        await client.get_chat_completion("chatcmpl-nothing")


# ---- streams that stop early ------------------------------------------------------------------


@pytest.fixture
async def slow_upstream(
    vllm_config: Callable[..., LoadedConfig], live_app: Callable[[LoadedConfig], Awaitable[int]]
) -> AsyncIterator[tuple[str, FakeOpenAI]]:
    async with FakeOpenAI(models=["fake-model"], chunks=500, chunk_delay=0.02) as fake:
        port = await live_app(vllm_config(fake.url, timeout=30))
        yield f"http://127.0.0.1:{port}", fake


@pytest.mark.parametrize("how", ["aclose", "async with", "break"])
async def test_stopping_a_stream_early_reaches_the_upstream(slow_upstream: tuple[str, FakeOpenAI], how: str) -> None:
    base, fake = slow_upstream
    async with StackClient(base) as client:
        stream = await client.openai_chat("chat", USER, stream=True)
        if how == "aclose":
            await anext(stream)
            await stream.aclose()
        elif how == "async with":
            async with stream:
                await anext(stream)
        else:
            async with stream:
                async for _ in stream:
                    break
        # stackd saw the client go and cancelled its upstream request: the fake's write failed.
        await asyncio.wait_for(fake.disconnected.wait(), timeout=30)
        assert fake.disconnects == 1
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        # The client is still usable: its session stayed open.
        assert (await client.health()).status == "OK"


async def test_native_stream_stopped_early(slow_upstream: tuple[str, FakeOpenAI]) -> None:
    base, fake = slow_upstream
    async with StackClient(base) as client:
        async with await client.chat_completion("chat", USER, stream=True) as stream:
            first = await anext(stream)
        assert first.event.event_type == "start"
        await asyncio.wait_for(fake.disconnected.wait(), timeout=30)


async def test_error_frame_raises_the_matching_class(vllm_config: Callable[..., LoadedConfig],
                                                     serve_app: ServeApp) -> None:
    async with FakeOpenAI(models=["fake-model"], chunks=20) as fake:
        fake.fault = Fault(cut_after=3)  # the upstream drops the stream half-way
        async with StackClient(base_of(await serve_app(vllm_config(fake.url)))) as client:
            stream = await client.openai_chat("chat", USER, stream=True)
            got = []
            with pytest.raises(UpstreamError) as info:
                async for chunk in stream:
                    got.append(chunk)
            assert got and info.value.status is None and info.value.type == "upstream_error"
            assert "stream" in str(info.value)


# ---- errors -----------------------------------------------------------------------------------


async def test_bad_request_carries_field_errors(client: StackClient) -> None:
    with pytest.raises(BadRequest) as info:
        await client.chat_completion("echo-1", [{"role": "nobody", "content": "x"}])
    error = info.value
    assert error.status == 400 and error.type == "invalid_request_error"
    assert error.errors and error.errors[0].loc.startswith("$.messages[0]")
    assert error.request_id  # the server's X-Request-ID, to find its log lines
    with pytest.raises(BadRequest) as info:
        await client.openai_chat("echo-1", USER, max_tokens="ten")
    assert [(e.loc, e.msg) for e in info.value.errors] == [("$.max_tokens", "expected an integer")]


async def test_not_found(client: StackClient) -> None:
    with pytest.raises(NotFound) as nf:
        await client.get_provider("nope")
    assert nf.value.status == 404 and "nope" in nf.value.message
    with pytest.raises(NotFound):
        await client.chat_completion("no-such-model", USER)
    with pytest.raises(NotFound):
        await client.run_shield("guard", USER)


async def test_not_implemented(serve_app: ServeApp, write_config: Callable[..., Path]) -> None:
    # The config lists the agents API, which no installed plugin serves: its routes answer 501.
    providers = """\
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {models: [echo-1]}
  agents:
  - provider_id: meta-reference
    provider_type: inline::meta-reference
    config: {}
"""
    path = write_config(apis="[inference, agents]", providers=providers, models="- model_id: echo-1\n")
    loaded = load_config(path, skip_missing_apis=True)
    async with StackClient(base_of(await serve_app(loaded)), check_version=False) as c:
        with pytest.raises(NotImplementedByServer) as ni:
            await c.request("POST", "/v1/responses", body={})  # a route the client has no method for
    assert ni.value.status == 501 and "agents" in ni.value.message
    assert isinstance(ni.value, ApiError) and isinstance(ni.value, StackClientError)


async def test_conflict(serve_app: ServeApp, write_config: Callable[..., Path]) -> None:
    providers = """\
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {models: [echo-1]}
  - provider_id: other
    provider_type: inline::echo
    config: {models: [echo-1]}
"""
    path = write_config(providers=providers, models="- model_id: echo-1\n  provider_id: echo\n")
    async with StackClient(base_of(await serve_app(path))) as c:
        with pytest.raises(Conflict) as info:
            await c.register_model("echo-1", provider_id="other")
        assert info.value.status == 409


async def test_payload_too_large(serve_app: ServeApp, write_config: Callable[..., Path]) -> None:
    path = write_config(server="  max_body_bytes: 4096\n")
    async with StackClient(base_of(await serve_app(path))) as c:
        with pytest.raises(PayloadTooLarge) as info:
            await c.openai_chat("echo-1", [{"role": "user", "content": "x" * 10_000}])
        assert info.value.status == 413
        assert (await c.openai_chat("echo-1", USER)).choices  # the connection is fine after it


async def test_upstream_errors(vllm_config: Callable[..., LoadedConfig], serve_app: ServeApp) -> None:
    async with FakeOpenAI(models=["fake-model"]) as fake, \
            StackClient(base_of(await serve_app(vllm_config(fake.url, timeout=2)))) as c:
        fake.fault = Fault(non_json=True)
        with pytest.raises(UpstreamError) as bad:
            await c.openai_chat("chat", USER)
        assert bad.value.status == 502
        fake.fault = Fault(delay=6)
        with pytest.raises(UpstreamError) as late:
            await c.openai_chat("chat", USER)
        assert late.value.status == 504
        await fake.stop()
        with pytest.raises(ServiceUnavailable) as down:
            await c.openai_chat("chat", USER)
        assert down.value.status == 503


# ---- auth ----------------------------------------------------------------------------------------


@attrs.define
class AuthEndpoint:
    url: str = ""
    tokens: list[str] = attrs.field(factory=list)


@pytest.fixture
async def auth_endpoint() -> AsyncIterator[AuthEndpoint]:
    state = AuthEndpoint()

    async def decide(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.tokens.append(body["api_key"])
        if body["api_key"] == TOKEN:
            return web.json_response({"principal": "alice", "attributes": {"roles": ["user"]}})
        return web.json_response({"message": "no"}, status=401)

    app = web.Application()
    app.router.add_post("/auth", decide)
    async with local_server(app) as base:
        state.url = f"{base}/auth"
        yield state


async def test_token_is_sent_and_never_shown(
    serve_app: ServeApp, write_config: Callable[..., Path], auth_endpoint: AuthEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    policy = """\
    access_policy:
    - permit: {actions: [read]}
"""
    server = f"  auth:\n    provider_type: custom\n    config:\n      endpoint: {auth_endpoint.url}\n{policy}"
    base = base_of(await serve_app(write_config(server=server)))
    async with StackClient(base, token=TOKEN) as c:
        assert TOKEN not in repr(c) and "token=set" in repr(c)
        assert [m.identifier for m in await c.list_models()]
        assert auth_endpoint.tokens[-1] == TOKEN
        with pytest.raises(Forbidden) as forbidden:  # reading is allowed, creating is not
            await c.register_model("echo-2", provider_id="echo")
        assert forbidden.value.status == 403
        errors: list[BaseException] = [forbidden.value]
    async with StackClient(base, token="sk-wrong-token-9876543210") as c:
        with pytest.raises(Unauthorized) as unauthorized:
            await c.list_models()
        errors.append(unauthorized.value)
        assert unauthorized.value.headers["WWW-Authenticate"] == "Bearer"
        assert (await c.health()).status == "OK"  # public with auth on
    async with StackClient(base) as c:
        with pytest.raises(Unauthorized):
            await c.list_models()
    for error in errors:
        assert TOKEN not in str(error) and TOKEN not in repr(error) and "sk-wrong" not in str(error)
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


def test_token_with_line_breaks_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="line breaks") as info:
        StackClient("http://127.0.0.1:1", token="abc\r\nX-Evil: 1")
    assert "Evil" not in str(info.value)
    with pytest.raises(ValueError, match="credentials"):
        StackClient("http://user:pw@127.0.0.1:1")
    with pytest.raises(ValueError, match="http"):
        StackClient("ftp://127.0.0.1")


# ---- quota and retry ---------------------------------------------------------------------------


async def test_quota_exceeded_carries_the_rate_limit_headers(
    serve_app: ServeApp, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    quota = (f"  quota:\n    kvstore: {{type: sqlite, db_path: {tmp_path / 'quota.db'}}}\n"
             "    anonymous_max_requests: 1\n    period: day\n")
    base = base_of(await serve_app(write_config(server=quota)))
    retry = Retry(attempts=5, max_wait=5.0)
    async with StackClient(base, retry=retry) as c:
        assert await c.list_models()  # the one request of the day (version and health are not counted)
        started = time.monotonic()
        with pytest.raises(QuotaExceeded) as info:
            await c.list_models()
        # Retry-After says "tomorrow": more than max_wait, so no pointless sleeping.
        assert time.monotonic() - started < 5.0
        error = info.value
        assert error.status == 429 and error.message == "Quota exceeded"
        assert error.retry_after is not None and error.retry_after > 5
        assert (error.limit, error.remaining) == (1, 0)
        assert error.reset is not None and abs(error.reset - error.retry_after) <= 2


def loading_providers(seconds: float) -> str:
    return f"""\
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {{models: [echo-1], ready_after: {seconds}}}
"""


async def test_retry_honours_retry_after_until_ready(serve_app: ServeApp, write_config: Callable[..., Path]) -> None:
    loading = write_config(providers=loading_providers(600), models="- model_id: echo-1\n", name="loading.yaml")
    server = await serve_app(loading)
    async with StackClient(base_of(server)) as c:
        with pytest.raises(ServiceUnavailable) as info:  # retry is opt-in
            await c.openai_chat("echo-1", USER)
        assert info.value.retry_after == 5
        assert (await c.health()).status == "Error"  # health's 503 is an answer, not an error
    await server.close()  # the next server uses the same stores
    # Ready 2 s after the first request: the retry, 5 s later (Retry-After), is answered.
    ready_soon = write_config(providers=loading_providers(2), models="- model_id: echo-1\n", name="soon.yaml")
    base = base_of(await serve_app(ready_soon))
    attempts: list[float] = []

    async def on_request_start(*_: Any) -> None:
        attempts.append(time.monotonic())

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        async with StackClient(base, session=session, retry=Retry(attempts=3, max_wait=20)) as c:
            answer = await c.openai_chat("echo-1", USER)
        assert answer.choices[0].message.content == "one two three"
        assert not session.closed  # a shared session is the caller's to close
    # The version check, the 503, then one retry 5 s (Retry-After) later.
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= 4.9


def test_retry_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=0)
    with pytest.raises(ValueError, match="max_wait"):
        Retry(max_wait=-1)
    assert Retry(backoff=0.5).delay(3, None) == 2.0
    assert Retry().delay(1, 7.0) == 7.0


# ---- sessions, versions, odd servers -----------------------------------------------------------


async def test_shared_session_is_left_open(serve_app: ServeApp, echo_config: Path) -> None:
    base = base_of(await serve_app(echo_config))
    async with aiohttp.ClientSession() as session:
        async with StackClient(base, session=session) as c:
            assert (await c.health()).status == "OK"
        assert not session.closed
        async with StackClient(base, session=session) as c:
            assert (await c.version()).version
    with pytest.raises(StackClientError, match="closed"):
        await StackClient(base, session=session).health()


async def test_connection_refused(port: Callable[[], int]) -> None:
    async with StackClient(f"http://127.0.0.1:{port()}") as c:
        with pytest.raises(ConnectionFailed, match="no answer from"):
            await c.health()


def odd_server(routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]) -> Any:
    """A plain aiohttp app on 127.0.0.1 playing a server stackd is not (another version, a proxy)."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    return local_server(app)


async def test_another_server_version_warns_once() -> None:
    calls: list[str] = []

    async def version(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return web.json_response({"version": "9.3.1"})

    async def health(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return web.json_response({"status": "OK"})

    async with odd_server({"/v1/version": version, "/v1/health": health}) as base:
        async with StackClient(base) as c:
            with pytest.warns(StackVersionWarning, match=r"9\.3\.1.*0\.1\.0"):
                assert (await c.health()).status == "OK"
            assert (await c.health()).status == "OK"  # no second check, no second warning
            assert c.server_version == "9.3.1"
        async with StackClient(base, check_version=False) as c:
            await c.health()
    assert calls == ["/v1/version", "/v1/health", "/v1/health", "/v1/health"]


async def test_unknown_status_maps_to_the_base_and_html_is_invalid() -> None:
    async def teapot(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "short and stout", "type": "teapot"}}, status=418)

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>proxy page</html>", content_type="text/html")

    async def bug(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "internal server error", "type": "internal_error"}},
                                 status=500, headers={"X-Request-ID": "req-42"})

    async def bad_shape(request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": 12})

    async with odd_server({"/v1/models": teapot, "/v1/health": html, "/v1/version": bad_shape,
                           "/v1/shields": bug}) as base, \
            StackClient(base, check_version=False) as c:
        with pytest.raises(ApiError) as info:
            await c.list_models()
        assert type(info.value) is ApiError
        assert (info.value.status, info.value.message, info.value.type) == (418, "short and stout", "teapot")
        with pytest.raises(InvalidResponse, match="not JSON"):
            await c.health()
        with pytest.raises(InvalidResponse, match=r"expected a string.*\$\.version"):
            await c.version()


async def test_stream_bounds() -> None:
    async def huge_line(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"id": "x", "model": "m", "choices": []}\n\n')
        for _ in range(64):
            await resp.write(b"x" * 4096)  # a line that never ends
        await resp.write_eof()
        return resp

    async def many_lines(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(b"data: " + b"y" * 1000 + b"\n")  # one event of many data lines
        await resp.write_eof()
        return resp

    async with odd_server({"/v1/chat/completions": huge_line, "/v1/completions": many_lines}) as base, \
            StackClient(base, check_version=False, max_event_bytes=32 * 1024) as c:
        stream = await c.openai_chat("m", USER, stream=True)
        assert (await anext(stream)).id == "x"
        with pytest.raises(InvalidResponse, match="line is over 32768 bytes"):
            await anext(stream)
        stream = await c.openai_completion("m", "p", stream=True)
        with pytest.raises(InvalidResponse, match="event is over 32768 bytes"):
            await anext(stream)


async def test_non_stream_answers_are_bounded() -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": [{"route": "/x" * 10_000, "method": "GET"}]})

    async with odd_server({"/v1/inspect/routes": big}) as base, \
            StackClient(base, check_version=False, max_response_bytes=1000) as c:
        with pytest.raises(InvalidResponse, match="max_response_bytes"):
            await c.list_routes()


# ---- the client needs none of the server -------------------------------------------------------


def test_importing_the_client_loads_no_server_code() -> None:
    code = (
        "import sys, stackd.client\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('stackd.server', 'stackd.config', 'stackd.providers', "
        "'stackd.stack', 'stackd.loading', 'stackd.registry', 'stackd_provider', 'aiosqlite', 'ruamel')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_method_and_error_is_documented() -> None:
    import stackd.client

    text = (Path(__file__).resolve().parent.parent / "docs" / "client.md").read_text(encoding="utf-8")
    methods = [name for name in dir(StackClient) if not name.startswith("_")
               and callable(getattr(StackClient, name)) and name != "close"]
    missing = [m for m in methods if f"`{m}(" not in text]
    missing += [name for name in stackd.client.__all__ if f"`{name}`" not in text and f"`{name}(" not in text]
    assert missing == [], f"document these in docs/client.md: {missing}"


async def _events(raw: bytes, cut: int, limit: int = 1024) -> list[str]:
    from stackd.client.stream import sse_data

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), cut):
            yield raw[i : i + cut]

    return [e async for e in sse_data(chunks(), limit)]


async def test_sse_parsing_wherever_the_chunks_split() -> None:
    raw = (b": a comment\r\nevent: x\r\ndata: {\"a\": 1}\r\n\r\n"
           b"data: line one\ndata:line two\nid: 7\n\n"
           b"\n\n"  # blank lines without data dispatch nothing
           b"data: [DONE]\n\n"
           b"data: unterminated")
    expected = ['{"a": 1}', "line one\nline two", "[DONE]", "unterminated"]
    for cut in range(1, len(raw) + 1):
        assert await _events(raw, cut) == expected, cut
    with pytest.raises(InvalidResponse, match="line is over 16 bytes"):
        await _events(b"data: " + b"z" * 40 + b"\n\n", 3, limit=16)


@pytest.mark.parametrize(("kind", "cls"), [
    ("invalid_request_error", BadRequest), ("authentication_error", Unauthorized), ("permission_error", Forbidden),
    ("not_found_error", NotFound), ("conflict_error", Conflict), ("request_too_large", PayloadTooLarge),
    ("rate_limit_error", QuotaExceeded), ("service_unavailable", ServiceUnavailable),
    ("upstream_error", UpstreamError), ("timeout_error", UpstreamError), ("not_implemented", NotImplementedByServer),
    ("internal_error", InternalServerError), ("something_new", ApiError),
])
def test_error_frames_map_by_type(kind: str, cls: type[ApiError]) -> None:
    from stackd.client.errors import error_for_frame

    error = error_for_frame({"error": {"message": "m", "type": kind}}, {})
    assert type(error) is cls and error.status is None and str(error) == "error in stream: m"
