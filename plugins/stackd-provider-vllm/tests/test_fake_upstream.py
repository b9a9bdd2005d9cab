"""remote::vllm against stackd's fake OpenAI server: pass-through, tokens, streams, failures."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web
from stackd_provider_vllm.inference import VLLMInferenceProvider

from stackd import CallContext, Model, OpenAIResult
from stackd.errors import (
    BadRequest,
    NotFound,
    UpstreamBadResponse,
    UpstreamClientError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from stackd.testing.fake_openai import FakeOpenAI, Fault
from stackd.upstream import SSEStream

from .conftest import MakeProvider, free_port

CTX = CallContext()


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], **extra}


async def collect(stream: Any) -> list[dict[str, Any]]:
    return [event async for event in stream]


def as_stream(result: OpenAIResult) -> SSEStream:
    """The stream a ``"stream": true`` call returns: the upstream's SSE stream, with ``aclose()``."""
    assert isinstance(result, SSEStream), type(result)
    return result


# -- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_url_with_or_without_v1_reaches_v1_routes(
    fake: FakeOpenAI, make_provider: MakeProvider, suffix: str
) -> None:
    provider = await make_provider(url=fake.url + suffix)
    await provider.openai_chat_completion(chat(), CTX)
    assert await provider.list_models() == ["fake-model", "fake-embed"]
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/models"]


async def test_url_with_a_path_prefix_keeps_it(make_provider: MakeProvider) -> None:
    provider = await make_provider(url="http://127.0.0.1:9/openai/v1")
    assert repr(provider) == "VLLMInferenceProvider(provider_id='vllm-test', url='http://127.0.0.1:9/openai')"
    assert str(provider._chat_url) == "http://127.0.0.1:9/openai/v1/chat/completions"


async def test_secrets_never_in_repr(fake: FakeOpenAI, make_provider: MakeProvider) -> None:
    provider = await make_provider(url=fake.url, api_token="s3cr3t-token")
    assert "s3cr3t" not in repr(provider)
    assert "s3cr3t" not in repr(provider.config)
    assert "********" in repr(provider.config)
    # The token does reach the server.
    await provider.openai_chat_completion(chat(), CTX)
    assert fake.requests[-1].headers["Authorization"] == "Bearer s3cr3t-token"


# -- models -----------------------------------------------------------------------------------------


async def test_register_served_model(provider: VLLMInferenceProvider) -> None:
    model = Model("mine", "vllm-test", "fake-model")
    assert await provider.register_model(model) == model
    embed = Model("e", "vllm-test", "fake-embed", model_type="embedding", metadata={"embedding_dimension": 8})
    assert await provider.register_model(embed) == embed


async def test_register_unknown_model_lists_served(provider: VLLMInferenceProvider, fake: FakeOpenAI) -> None:
    with pytest.raises(NotFound) as info:
        await provider.register_model(Model("x", "vllm-test", "llama-9000"))
    assert info.value.message == (
        f"model 'llama-9000' is not served by provider 'vllm-test' at {fake.url}; the server serves "
        "'fake-model', 'fake-embed'. Set provider_model_id to one of these, or start the server with "
        "this model (vLLM: --served-model-name llama-9000)"
    )


async def test_register_when_upstream_down_is_503(make_provider: MakeProvider) -> None:
    port = free_port()
    provider = await make_provider("down", url=f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.register_model(Model("x", "down", "m"))
    assert info.value.status == 503
    assert "'down'" in info.value.message
    assert f"http://127.0.0.1:{port}/v1/models" in info.value.message


async def test_models_route_refusing_stackd_is_a_config_error(
    provider: VLLMInferenceProvider, fake: FakeOpenAI
) -> None:
    fake.fault_on = ("/v1/models",)
    fake.fault = Fault(status=401, message="Incorrect API key provided", error_type="invalid_api_key")
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.register_model(Model("x", "vllm-test", "fake-model"))
    assert "answered HTTP 401: provider 'vllm-test': Incorrect API key provided" in info.value.message
    assert "api_token" in info.value.message


async def test_health(provider: VLLMInferenceProvider, fake: FakeOpenAI, make_provider: MakeProvider) -> None:
    assert await provider.health() == {"status": "OK"}
    fake.fault_on = ("/v1/models",)
    fake.fault = Fault(non_json=True)
    health = await provider.health()
    assert health["status"] == "Error"
    assert "not JSON" in health["message"]
    down = await make_provider("down", url=f"http://127.0.0.1:{free_port()}")
    health = await down.health()
    assert health["status"] == "Error"
    assert "cannot connect" in health["message"]


# -- pass-through -----------------------------------------------------------------------------------


async def test_every_field_reaches_the_server_unchanged(
    provider: VLLMInferenceProvider, fake: FakeOpenAI
) -> None:
    params = chat(
        n=2,
        logprobs=True,
        top_logprobs=3,
        seed=1234,
        guided_json={"type": "object", "properties": {"a": {"type": "integer"}}},
        guided_choice=["yes", "no"],
        prompt_logprobs=1,
        temperature=0.0,
        max_tokens=5,
        some_future_field={"nested": [1, 2, None]},
    )
    sent = orjson.loads(orjson.dumps(params))
    answer = await provider.openai_chat_completion(params, CTX)
    assert isinstance(answer, dict)
    assert answer["object"] == "chat.completion"
    assert fake.requests[-1].body == sent
    assert params == sent  # the caller's dict is not touched


async def test_stream_options_kept_as_given(provider: VLLMInferenceProvider, fake: FakeOpenAI) -> None:
    stream = await provider.openai_chat_completion(
        chat(stream=True, stream_options={"include_usage": True}), CTX
    )
    events = await collect(stream)
    assert fake.requests[-1].body == chat(stream=True, stream_options={"include_usage": True})
    assert events[-1]["choices"] == []
    assert events[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10}


async def test_completions_and_embeddings_pass_through(
    provider: VLLMInferenceProvider, fake: FakeOpenAI
) -> None:
    completion = await provider.openai_completion(
        {"model": "fake-model", "prompt": "a b c", "max_tokens": 3, "logprobs": 2, "echo": False}, CTX
    )
    assert isinstance(completion, dict)
    assert completion["choices"][0]["text"] == "tok0 tok1 tok2 "
    assert completion["choices"][0]["finish_reason"] == "length"
    assert fake.requests[-1].body == {
        "model": "fake-model", "prompt": "a b c", "max_tokens": 3, "logprobs": 2, "echo": False,
    }  # fmt: skip

    embeddings = await provider.openai_embeddings(
        {"model": "fake-embed", "input": ["x", "y"], "encoding_format": "base64", "dimensions": 4}, CTX
    )
    assert [d["index"] for d in embeddings["data"]] == [0, 1]
    assert isinstance(embeddings["data"][0]["embedding"], str)
    assert fake.requests[-1].path == "/v1/embeddings"
    assert fake.requests[-1].body == {
        "model": "fake-embed", "input": ["x", "y"], "encoding_format": "base64", "dimensions": 4,
    }  # fmt: skip


async def test_completion_stream(provider: VLLMInferenceProvider) -> None:
    stream = await provider.openai_completion({"model": "fake-model", "prompt": "hi", "stream": True}, CTX)
    events = await collect(stream)
    assert "".join(e["choices"][0]["text"] for e in events) == "".join(f"tok{i} " for i in range(8))
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_default_max_tokens_only_when_absent(fake: FakeOpenAI, make_provider: MakeProvider) -> None:
    provider = await make_provider(url=fake.url, max_tokens=3)
    await provider.openai_chat_completion(chat(), CTX)
    await provider.openai_chat_completion(chat(max_tokens=5), CTX)
    await provider.openai_chat_completion(chat(max_completion_tokens=6), CTX)
    await provider.openai_chat_completion(chat(max_tokens=None), CTX)
    await provider.openai_completion({"model": "fake-model", "prompt": "p"}, CTX)
    await provider.openai_embeddings({"model": "fake-embed", "input": "p"}, CTX)
    bodies = [r.body or {} for r in fake.requests]
    assert bodies[0]["max_tokens"] == 3
    assert bodies[1]["max_tokens"] == 5
    assert "max_tokens" not in bodies[2]
    assert bodies[2]["max_completion_tokens"] == 6
    assert bodies[3]["max_tokens"] == 3  # an explicit null means "no preference"
    assert bodies[4]["max_tokens"] == 3
    assert "max_tokens" not in bodies[5]


async def test_no_default_max_tokens_sends_none(provider: VLLMInferenceProvider, fake: FakeOpenAI) -> None:
    await provider.openai_chat_completion(chat(), CTX)
    assert "max_tokens" not in (fake.requests[-1].body or {})


# -- per-request tokens -----------------------------------------------------------------------------


async def test_provider_data_token_is_per_request(provider: VLLMInferenceProvider, fake: FakeOpenAI) -> None:
    fake.chunk_delay = 0.002  # streams overlap, so requests really are concurrent

    async def one(i: int) -> None:
        if i % 3 == 0:
            ctx = CTX
        elif i % 3 == 1:
            ctx = CallContext(provider_data={"vllm_api_token": f"user-{i}"})
        else:
            ctx = CallContext(provider_data={"api_key": f"user-{i}"})
        params = chat(user=str(i), stream=i % 2 == 0)
        answer = await provider.openai_chat_completion(params, ctx)
        if not isinstance(answer, dict):
            await collect(answer)

    await asyncio.gather(*(one(i) for i in range(30)))
    assert len(fake.requests) == 30
    for received in fake.requests:
        i = int((received.body or {})["user"])
        expected = "Bearer config-token" if i % 3 == 0 else f"Bearer user-{i}"
        assert received.headers["Authorization"] == expected, i
    # Nothing stuck to the provider: a plain request afterwards uses the configured token.
    await provider.openai_chat_completion(chat(), CTX)
    assert fake.requests[-1].headers["Authorization"] == "Bearer config-token"


async def test_provider_data_token_without_configured_token(
    fake: FakeOpenAI, make_provider: MakeProvider
) -> None:
    provider = await make_provider(url=fake.url)
    fake.api_key = "only-this"
    with pytest.raises(UpstreamClientError) as info:
        await provider.openai_chat_completion(chat(), CTX)
    assert info.value.status == 401
    assert "Authorization" not in fake.requests[-1].headers
    answer = await provider.openai_chat_completion(
        chat(), CallContext(provider_data={"vllm_api_token": "only-this"})
    )
    assert isinstance(answer, dict)


async def test_provider_data_token_of_wrong_type(provider: VLLMInferenceProvider) -> None:
    with pytest.raises(BadRequest) as info:
        await provider.openai_chat_completion(chat(), CallContext(provider_data={"vllm_api_token": 12}))
    assert "'vllm_api_token'" in info.value.message
    assert "12" not in info.value.message


# -- streams ----------------------------------------------------------------------------------------


async def test_stream_events_in_order(provider: VLLMInferenceProvider) -> None:
    stream = await provider.openai_chat_completion(chat(stream=True), CTX)
    events = await collect(stream)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == "".join(f"tok{i} " for i in range(8))
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(e["object"] == "chat.completion.chunk" for e in events)


async def test_finished_streams_reuse_the_connection(
    provider: VLLMInferenceProvider, fake: FakeOpenAI
) -> None:
    for _ in range(3):
        await collect(await provider.openai_chat_completion(chat(stream=True), CTX))
        await provider.openai_chat_completion(chat(), CTX)
    assert len({r.peer for r in fake.requests}) == 1


async def test_aclose_closes_the_upstream_connection(
    provider: VLLMInferenceProvider, fake: FakeOpenAI
) -> None:
    fake.chunks = 200
    fake.chunk_delay = 0.01
    stream = as_stream(await provider.openai_chat_completion(chat(stream=True), CTX))
    seen = [await anext(stream), await anext(stream)]
    assert seen[1]["choices"][0]["delta"]["content"] == "tok0 "
    await stream.aclose()
    await asyncio.wait_for(fake.disconnected.wait(), 2)
    assert fake.disconnects == 1


async def test_aclose_before_the_first_event_closes_too(
    provider: VLLMInferenceProvider, fake: FakeOpenAI
) -> None:
    fake.chunks = 200
    fake.chunk_delay = 0.01
    stream = as_stream(await provider.openai_chat_completion(chat(stream=True), CTX))
    await stream.aclose()
    await asyncio.wait_for(fake.disconnected.wait(), 2)


# -- failures ---------------------------------------------------------------------------------------


async def test_refused_port_is_503_naming_provider_and_url(make_provider: MakeProvider) -> None:
    port = free_port()
    provider = await make_provider("my-vllm", url=f"http://127.0.0.1:{port}/v1")
    for stream in (False, True):
        with pytest.raises(UpstreamUnavailable) as info:
            await provider.openai_chat_completion(chat(stream=stream), CTX)
        assert info.value.status == 503
        assert info.value.message.startswith(
            f"provider 'my-vllm': cannot connect to http://127.0.0.1:{port}/v1/chat/completions"
        )


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_upstream_is_504(fake: FakeOpenAI, make_provider: MakeProvider, stream: bool) -> None:
    provider = await make_provider(url=fake.url, timeout=0.2)
    fake.fault = Fault(delay=3)
    with pytest.raises(UpstreamTimeout) as info:
        await provider.openai_chat_completion(chat(stream=stream), CTX)
    assert info.value.status == 504
    assert "'vllm-test'" in info.value.message


async def test_stall_mid_stream_is_504(fake: FakeOpenAI, make_provider: MakeProvider) -> None:
    provider = await make_provider(url=fake.url, timeout=0.2)
    fake.chunk_delay = 3
    stream = as_stream(await provider.openai_chat_completion(chat(stream=True), CTX))
    await anext(stream)
    with pytest.raises(UpstreamTimeout):
        await collect(stream)


async def test_stall_mid_stream_meets_the_idle_timeout_when_it_is_the_tighter_bound(
    fake: FakeOpenAI, make_provider: MakeProvider
) -> None:
    """stream_idle_timeout under timeout: the byte timer is left out of streams (aiohttp would move it
    on every read), and the stall is still cut, by the idle bound."""
    provider = await make_provider(url=fake.url, timeout=600, stream_idle_timeout=0.3)
    assert provider._stream_timeout.sock_read is None
    fake.chunk_delay = 3
    stream = as_stream(await provider.openai_chat_completion(chat(stream=True), CTX))
    await anext(stream)
    with pytest.raises(UpstreamTimeout, match=r"sent no stream event for 0\.3 s \(stream_idle_timeout\)"):
        await collect(stream)


@pytest.mark.parametrize("status", [400, 404, 422, 429])
@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_4xx_passes_through(
    provider: VLLMInferenceProvider, fake: FakeOpenAI, status: int, stream: bool
) -> None:
    fake.fault = Fault(status=status, message="This model's maximum context length is 16 tokens")
    with pytest.raises(UpstreamClientError) as info:
        await provider.openai_chat_completion(chat(stream=stream), CTX)
    assert info.value.status == status
    assert info.value.message == "provider 'vllm-test': This model's maximum context length is 16 tokens"


async def test_unknown_model_upstream_404(provider: VLLMInferenceProvider) -> None:
    with pytest.raises(UpstreamClientError) as info:
        await provider.openai_chat_completion({"model": "gone", "messages": []}, CTX)
    assert info.value.status == 404
    assert "The model `gone` does not exist." in info.value.message


async def test_upstream_5xx_is_502(provider: VLLMInferenceProvider, fake: FakeOpenAI) -> None:
    fake.fault = Fault(status=500, message="CUDA out of memory")
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.openai_completion({"model": "fake-model", "prompt": "x"}, CTX)
    assert info.value.message == "provider 'vllm-test' failed with HTTP 500: CUDA out of memory"


@pytest.mark.parametrize("stream", [False, True])
async def test_non_json_is_502(provider: VLLMInferenceProvider, fake: FakeOpenAI, stream: bool) -> None:
    fake.fault = Fault(non_json=True)
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.openai_chat_completion(chat(stream=stream), CTX)
    assert info.value.status == 502
    if stream:
        assert "text/html instead of an event stream" in info.value.message
    else:
        assert "not JSON" in info.value.message


async def test_truncated_answer_is_502(provider: VLLMInferenceProvider, fake: FakeOpenAI) -> None:
    fake.fault = Fault(cut_after=1)
    with pytest.raises(UpstreamBadResponse) as info:
        await provider.openai_embeddings({"model": "fake-embed", "input": "x"}, CTX)
    assert info.value.status == 502
    assert "'vllm-test'" in info.value.message


async def test_stream_cut_midway_raises_502_from_the_iterator(
    provider: VLLMInferenceProvider, fake: FakeOpenAI
) -> None:
    fake.fault = Fault(cut_after=3)
    stream = as_stream(await provider.openai_chat_completion(chat(stream=True), CTX))
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamBadResponse) as info:
        async for event in stream:
            got.append(event)
    assert len(got) == 3
    assert "'vllm-test'" in info.value.message
    # The broken connection is not reused: the next request works.
    fake.reset()
    assert isinstance(await provider.openai_chat_completion(chat(), CTX), dict)


async def test_mid_stream_error_event_is_502(make_provider: MakeProvider) -> None:
    # vLLM reports failures after the status line as one event holding an "error" object.
    async def failing(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"id":"x","object":"chat.completion.chunk","choices":[]}\n\n')
        await resp.write(
            b'data: {"error":{"message":"engine died","type":"InternalServerError","code":500}}\n\n'
        )
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", failing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        provider = await make_provider(url=f"http://127.0.0.1:{runner.addresses[0][1]}")
        stream = await provider.openai_chat_completion(chat(stream=True), CTX)
        with pytest.raises(UpstreamBadResponse) as info:
            await collect(stream)
        assert info.value.message == "provider 'vllm-test' failed mid-stream: engine died"
    finally:
        await runner.cleanup()


# -- TLS --------------------------------------------------------------------------------------------


async def test_tls_verify_with_a_ca_bundle(make_provider: MakeProvider, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    async with FakeOpenAI(models=("m",), ssl_context=server_ctx) as tls_fake:
        assert tls_fake.url.startswith("https://")
        trusted = await make_provider("tls", url=tls_fake.url, tls_verify=str(bundle))
        assert await trusted.list_models() == ["m"]
        unverified = await make_provider("tls", url=tls_fake.url, tls_verify=False)
        assert await unverified.list_models() == ["m"]
        system_cas = await make_provider("tls", url=tls_fake.url)
        with pytest.raises(UpstreamUnavailable) as info:
            await system_cas.openai_chat_completion({"model": "m", "messages": []}, CTX)
        assert f"provider 'tls': cannot connect to {tls_fake.url}/v1/chat/completions" in info.value.message
        assert "certificate" in info.value.message.lower()


async def test_configured_token_refused_is_502_not_the_clients_401(
    fake: FakeOpenAI, make_provider: MakeProvider
) -> None:
    """stackd's own api_token refused by the upstream: the client's token to stackd was fine,
    so the client must not get a 401 (it would think its own token was wrong)."""
    provider = await make_provider(url=fake.url, api_token="stale-config-token")
    fake.api_key = "the-real-one"
    for stream in (False, True):
        with pytest.raises(UpstreamBadResponse) as info:
            answer = await provider.openai_chat_completion(chat(stream=stream), CTX)
            if not isinstance(answer, dict):
                await collect(answer)
        assert info.value.status == 502
        assert "the provider's credentials were refused" in info.value.message
        assert "stale-config-token" not in info.value.message
    # A token the caller brought (provider data) that is refused stays the caller's 401.
    with pytest.raises(UpstreamClientError) as client_info:
        await provider.openai_chat_completion(chat(), CallContext(provider_data={"vllm_api_token": "wrong"}))
    assert client_info.value.status == 401
