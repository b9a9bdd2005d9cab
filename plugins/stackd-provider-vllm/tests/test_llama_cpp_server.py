"""remote::vllm against a real OpenAI-compatible server nobody here wrote: llama-cpp-python's,
serving Gemma 3 270M. Slow (a subprocess loads the model once per session) but in the default run."""

from __future__ import annotations

from typing import Any

import pytest
from stackd_provider_vllm.inference import VLLMInferenceProvider

from stackd import CallContext, Model
from stackd.errors import NotFound, UpstreamClientError

from .conftest import MakeProvider, RealServer

pytestmark = pytest.mark.slow

CTX = CallContext()


@pytest.fixture
async def real(llama_server: RealServer, make_provider: MakeProvider) -> VLLMInferenceProvider:
    # The /v1 form of the URL, as people copy it from vLLM's docs.
    provider: VLLMInferenceProvider = await make_provider(
        "llama", url=f"{llama_server.url}/v1", max_tokens=64
    )
    return provider


def chat(model: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Write one sentence about cats."}]
    return {"model": model, "messages": messages, "temperature": 0.0, **extra}


async def test_register_model(real: VLLMInferenceProvider, llama_server: RealServer) -> None:
    model = Model("gemma", "llama", llama_server.model)
    assert await real.register_model(model) == model
    assert await real.list_models() == [llama_server.model]
    assert await real.health() == {"status": "OK"}


async def test_register_unknown_model_lists_served(
    real: VLLMInferenceProvider, llama_server: RealServer
) -> None:
    with pytest.raises(NotFound) as info:
        await real.register_model(Model("x", "llama", "llama-3-70b"))
    assert f"the server serves '{llama_server.model}'" in info.value.message
    assert "'llama-3-70b'" in info.value.message


async def test_chat_non_stream(real: VLLMInferenceProvider, llama_server: RealServer) -> None:
    answer = await real.openai_chat_completion(chat(llama_server.model, max_tokens=8), CTX)
    assert isinstance(answer, dict)
    assert answer["object"] == "chat.completion"
    choice = answer["choices"][0]
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    assert 0 < answer["usage"]["completion_tokens"] <= 8


async def test_max_tokens_honoured(real: VLLMInferenceProvider, llama_server: RealServer) -> None:
    answer = await real.openai_chat_completion(chat(llama_server.model, max_tokens=3), CTX)
    assert isinstance(answer, dict)
    assert answer["usage"]["completion_tokens"] == 3
    assert answer["choices"][0]["finish_reason"] == "length"


async def test_chat_stream(real: VLLMInferenceProvider, llama_server: RealServer) -> None:
    stream = await real.openai_chat_completion(
        chat(llama_server.model, max_tokens=6, stream=True, stream_options={"include_usage": True}), CTX
    )
    events = [event async for event in stream]  # type: ignore[union-attr]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert len({e["id"] for e in events}) == 1
    content_events = [e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert "".join(e["choices"][0]["delta"]["content"] for e in content_events).strip()
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    # In order: nothing finishes before the last choice-bearing event, which does.
    assert all(f is None for f in finishes[:-1])
    assert finishes[-1] in ("stop", "length")
    # The same answer as a non-stream call: greedy decoding, so the pieces must add up to it.
    whole = await real.openai_chat_completion(chat(llama_server.model, max_tokens=6), CTX)
    assert isinstance(whole, dict)
    streamed = "".join(e["choices"][0]["delta"]["content"] for e in content_events)
    assert streamed == whole["choices"][0]["message"]["content"]


async def test_completions(real: VLLMInferenceProvider, llama_server: RealServer) -> None:
    answer = await real.openai_completion(
        {
            "model": llama_server.model,
            "prompt": "The capital of France is",
            "max_tokens": 4,
            "temperature": 0.0,
        },
        CTX,
    )
    assert isinstance(answer, dict)
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"].strip()
    assert answer["usage"]["completion_tokens"] <= 4


async def test_default_max_tokens_applied(llama_server: RealServer, make_provider: MakeProvider) -> None:
    provider = await make_provider("llama", url=llama_server.url, max_tokens=2)
    answer = await provider.openai_completion(
        {"model": llama_server.model, "prompt": "Once upon a time", "temperature": 0.0}, CTX
    )
    assert isinstance(answer, dict)
    assert answer["usage"]["completion_tokens"] == 2


async def test_unknown_fields_pass_through(real: VLLMInferenceProvider, llama_server: RealServer) -> None:
    # logprobs/top_logprobs only appear in the answer if they reached the server.
    answer = await real.openai_chat_completion(
        chat(llama_server.model, max_tokens=3, seed=7, n=1, logprobs=True, top_logprobs=2), CTX
    )
    assert isinstance(answer, dict)
    content = answer["choices"][0]["logprobs"]["content"]
    assert len(content) == 3
    assert all(len(token["top_logprobs"]) == 2 for token in content)
    plain = await real.openai_chat_completion(chat(llama_server.model, max_tokens=3), CTX)
    assert isinstance(plain, dict)
    assert plain["choices"][0]["logprobs"] is None


async def test_seed_reaches_the_server(real: VLLMInferenceProvider, llama_server: RealServer) -> None:
    params = chat(llama_server.model, max_tokens=12, temperature=1.5, seed=1234)
    first = await real.openai_chat_completion(params, CTX)
    second = await real.openai_chat_completion(params, CTX)
    assert isinstance(first, dict)
    assert isinstance(second, dict)
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
    # Without a seed the same sampling differs between calls, so the equality above is the seed's doing.
    unseeded = {k: v for k, v in params.items() if k != "seed"}
    answers = set()
    for _ in range(3):
        answer = await real.openai_chat_completion(unseeded, CTX)
        assert isinstance(answer, dict)
        answers.add(answer["choices"][0]["message"]["content"])
    assert len(answers) > 1


async def test_upstream_4xx_passes_through(real: VLLMInferenceProvider, llama_server: RealServer) -> None:
    too_long = {"model": llama_server.model, "messages": [{"role": "user", "content": "word " * 3000}]}
    with pytest.raises(UpstreamClientError) as info:
        await real.openai_chat_completion(too_long, CTX)
    assert info.value.status == 400
    assert "maximum context length is 1024 tokens" in info.value.message
    assert info.value.message.startswith("provider 'llama': ")
