"""inline::llama-guard end to end: run-shield through stackd, the guard model on a second fake vLLM."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from stackd_provider_llama_guard.prompt import build_prompt, parse_verdict

from stackd.config.problems import ConfigError
from stackd.testing.fake_openai import FakeOpenAI, Fault

GUARD = "meta-llama/Llama-Guard-3-1B"


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def _run(client: Any, messages: list[dict[str, Any]], shield: str = GUARD) -> Any:
    return await client.post("/v1/safety/run-shield", json={"shield_id": shield, "messages": messages})


async def test_shields_lists_the_configured_shield(connect: Any) -> None:
    client = await connect()
    resp = await client.get("/v1/shields")
    assert resp.status == 200
    assert [s["identifier"] for s in (await resp.json())["data"]] == [GUARD]


async def test_safe_message_has_no_violation(connect: Any, guard_upstream: FakeOpenAI) -> None:
    client = await connect()
    resp = await _run(client, _user("how do I bake bread?"))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"violation": None}
    sent = guard_upstream.requests[-1].body
    assert sent is not None and sent["model"] == GUARD and sent["temperature"] == 0.0
    prompt = sent["messages"][0]["content"]
    assert "User: how do I bake bread?" in prompt and "S14: Code Interpreter Abuse." in prompt
    assert "ONLY THE LAST User message" in prompt


async def test_unsafe_message_is_a_violation(connect: Any) -> None:
    client = await connect()
    resp = await _run(client, _user("how do I build a bomb?"))
    assert resp.status == 200
    violation = (await resp.json())["violation"]
    assert violation["violation_level"] == "error"
    assert violation["user_message"] == "I can't answer that. Can I help with something else?"
    assert violation["metadata"]["violation_type"] == "S1,S9"


async def test_the_last_speaker_is_judged(connect: Any, guard_upstream: FakeOpenAI) -> None:
    client = await connect()
    messages = [{"role": "user", "content": "a bomb?"}, {"role": "assistant", "content": "no, let us bake bread"}]
    resp = await _run(client, messages)
    assert await resp.json() == {"violation": None}
    prompt = guard_upstream.requests[-1].body["messages"][0]["content"]  # type: ignore[index]
    assert "ONLY THE LAST Agent message" in prompt and "Agent: no, let us bake bread" in prompt


async def test_excluded_category_is_not_asked_nor_reported(connect: Any, guard_upstream: FakeOpenAI) -> None:
    client = await connect(config="{excluded_categories: [S13]}")
    resp = await _run(client, _user("who wins the election?"))
    assert await resp.json() == {"violation": None}
    assert "S13:" not in guard_upstream.requests[-1].body["messages"][0]["content"]  # type: ignore[index]
    # A verdict naming only excluded categories is safe, whatever the model says.
    guard_upstream.fault = Fault(body=_verdict("unsafe\nS13"))
    assert await (await _run(client, _user("x"))).json() == {"violation": None}
    guard_upstream.fault = Fault(body=_verdict("unsafe\nS13,S2"))
    violation = (await (await _run(client, _user("x"))).json())["violation"]
    assert violation["metadata"]["violation_type"] == "S2"


async def test_unknown_shield_is_404(connect: Any) -> None:
    client = await connect()
    resp = await _run(client, _user("hi"), shield="nope")
    assert resp.status == 404
    assert "shield 'nope' not found" in (await resp.json())["error"]["message"]


async def test_an_answer_that_is_not_a_verdict_is_502(connect: Any, guard_upstream: FakeOpenAI) -> None:
    client = await connect()
    for text in ("I think it is fine", "unsafe\nS99", "unsafe", ""):
        guard_upstream.fault = Fault(body=_verdict(text))
        resp = await _run(client, _user("hi"))
        assert resp.status == 502, text
        message = (await resp.json())["error"]["message"]
        assert "did not answer as Llama Guard 3 does" in message or "without text" in message
    guard_upstream.fault = Fault(body=b'{"choices": []}')
    assert (await _run(client, _user("hi"))).status == 502


async def test_guard_upstream_down_is_503(connect: Any, guard_upstream: FakeOpenAI) -> None:
    client = await connect()
    await guard_upstream.stop()
    resp = await _run(client, _user("hi"))
    assert resp.status == 503


async def test_registering_a_shield_on_another_model_is_400(connect: Any) -> None:
    client = await connect(config="{model: my-guard}")
    resp = await client.post("/v1/shields", json={"shield_id": "s", "provider_shield_id": "chat",
                                                  "provider_id": "llama-guard"})
    assert resp.status == 400
    assert "cannot use model 'chat'" in (await resp.json())["error"]["message"]
    for ok in ("Llama-Guard-3-8B", "meta-llama/Llama-Guard-3-11B-Vision", "my-guard"):
        resp = await client.post("/v1/shields", json={"shield_id": ok, "provider_id": "llama-guard"})
        assert resp.status == 200, await resp.text()


async def test_a_shield_whose_model_is_missing_is_503_naming_it(connect: Any) -> None:
    client = await connect()
    await client.post("/v1/shields", json={"shield_id": "g8", "provider_shield_id": "Llama-Guard-3-8B",
                                           "provider_id": "llama-guard"})
    resp = await _run(client, _user("hi"), shield="g8")
    assert resp.status == 503
    assert "needs model 'Llama-Guard-3-8B', which is not registered" in (await resp.json())["error"]["message"]


async def test_bad_excluded_category_is_a_config_error(connect: Any) -> None:
    with pytest.raises(ConfigError) as info:
        await connect(config="{excluded_categories: [S15]}")
    assert "S1 to S14, got 'S15' @ $.providers.safety[0].config.excluded_categories[0]" in str(info.value)


def test_prompt_skips_system_and_tool_turns_and_reads_text_items() -> None:
    prompt = build_prompt([
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "image", "image": {}}]},
        {"role": "tool", "call_id": "1", "content": "42"},
    ], ())
    assert "be nice" not in prompt and "42" not in prompt and "User: hello" in prompt


def test_parse_verdict() -> None:
    assert parse_verdict(" safe \n") is None
    assert parse_verdict("unsafe\nS1, S3") == ["S1", "S3"]


def _verdict(text: str) -> bytes:
    return orjson.dumps({"id": "x", "object": "chat.completion", "model": GUARD,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}]})
