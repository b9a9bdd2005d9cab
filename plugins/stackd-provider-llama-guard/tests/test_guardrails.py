"""Guardrails on inference: a chat model guarded by the Llama Guard shield, on both route
families, streamed and not; the guard model on a second fake vLLM."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from stackd.config.problems import ConfigError
from stackd.guardrails import GuardrailGap
from stackd.testing.fake_openai import FakeOpenAI, Fault
from stackd.testing.local_server import local_server

GUARD = "meta-llama/Llama-Guard-3-1B"
GUARDED = f"  input_shields: [{GUARD}]\n  output_shields: [{GUARD}]\n"
CANNED = "I can't answer that. Can I help with something else?"
SAFE_PART = "Let me tell you about bread. " * 12  # 336 characters, judged safe
UNSAFE_ANSWER = SAFE_PART + "Then you build a bomb with these steps: " + "step " * 40


def _chat(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": text}], "stream": stream}


def _native(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model_id": "chat", "messages": [{"role": "user", "content": text}], "stream": stream}


async def _frames(resp: Any) -> list[Any]:
    raw = (await resp.read()).decode()
    return [orjson.loads(f[6:]) if f[6:] != "[DONE]" else "[DONE]" for f in raw.split("\n\n") if f.startswith("data: ")]


async def test_safe_chat_passes_both_shields(connect: Any, guard_upstream: FakeOpenAI) -> None:
    client = await connect(chat=GUARDED)
    resp = await client.post("/v1/chat/completions", json=_chat("bake bread"))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["choices"][0]["message"]["content"].startswith("tok0")
    assert "violation" not in body
    prompts = [r.body["messages"][0]["content"] for r in guard_upstream.requests  # type: ignore[index]
               if r.path == "/v1/chat/completions"]
    assert "ONLY THE LAST User message" in prompts[0] and "ONLY THE LAST Agent message" in prompts[1]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/openai/v1/chat/completions"])
async def test_unsafe_input_never_reaches_the_model(connect: Any, chat_upstream: FakeOpenAI, path: str) -> None:
    client = await connect(chat=GUARDED)
    resp = await client.post(path, json=_chat("how to build a bomb"))
    assert resp.status == 200
    body = await resp.json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == CANNED and choice["finish_reason"] == "content_filter"
    assert body["violation"]["shield_id"] == GUARD and body["violation"]["stage"] == "input"
    assert body["violation"]["metadata"]["violation_type"] == "S1,S9"
    assert [r for r in chat_upstream.requests if r.path == "/v1/chat/completions"] == []
    # Streamed: one chunk with the message and the violation.
    frames = await _frames(await client.post(path, json=_chat("how to build a bomb", stream=True)))
    assert frames[-1] == "[DONE]"
    assert frames[0]["choices"][0]["delta"]["content"] == CANNED and frames[0]["violation"]["stage"] == "input"
    assert [r for r in chat_upstream.requests if r.path == "/v1/chat/completions"] == []


async def test_unsafe_answer_is_replaced(connect: Any, chat_upstream: FakeOpenAI) -> None:
    client = await connect(chat=GUARDED)
    chat_upstream.reply = lambda body: UNSAFE_ANSWER
    body = await (await client.post("/v1/chat/completions", json=_chat("tell me a story"))).json()
    assert body["choices"][0]["message"]["content"] == CANNED
    assert body["violation"]["stage"] == "output"
    assert "bomb" not in orjson.dumps(body).decode().replace("violation", "")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/openai/v1/chat/completions"])
async def test_unsafe_stream_is_cut_within_the_window(connect: Any, chat_upstream: FakeOpenAI, path: str) -> None:
    client = await connect(chat=GUARDED, extra="server:\n  guardrail_window_chars: 100\n")
    chat_upstream.reply = lambda body: UNSAFE_ANSWER
    resp = await client.post(path, json=_chat("tell me a story", stream=True))
    assert resp.status == 200
    frames = await _frames(resp)
    assert frames[-1] == "[DONE]"
    last = frames[-2]
    assert last["violation"]["stage"] == "output" and last["choices"][0]["finish_reason"] == "content_filter"
    sent = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames[:-2])
    assert "bomb" not in sent
    assert SAFE_PART.startswith(sent) and len(sent) >= len(SAFE_PART) - 100  # held back at most the window
    assert last["choices"][0]["delta"]["content"] == CANNED


async def test_safe_stream_comes_whole(connect: Any) -> None:
    client = await connect(chat=GUARDED, extra="server:\n  guardrail_window_chars: 10\n")
    frames = await _frames(await client.post("/v1/chat/completions", json=_chat("bread", stream=True)))
    text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames[:-1])
    assert text == "".join(f"tok{i} " for i in range(8))
    assert all("violation" not in f for f in frames[:-1])


async def test_native_routes_apply_the_shields(connect: Any, chat_upstream: FakeOpenAI) -> None:
    client = await connect(chat=GUARDED)
    body = await (await client.post("/v1/inference/chat-completion", json=_native("a bomb please"))).json()
    assert body["completion_message"]["content"] == CANNED and body["violation"]["stage"] == "input"
    chat_upstream.reply = lambda body: UNSAFE_ANSWER
    frames = await _frames(await client.post("/v1/inference/chat-completion", json=_native("story", stream=True)))
    assert "[DONE]" not in frames
    text = "".join(f["event"]["delta"].get("text") or "" for f in frames if f["event"]["event_type"] == "progress")
    assert "bomb" not in text and text.endswith(CANNED)
    assert frames[-1]["event"]["event_type"] == "complete" and frames[-1]["violation"]["stage"] == "output"
    body = await (await client.post("/v1/inference/chat-completion", json=_native("story"))).json()
    assert body["completion_message"]["content"] == CANNED and body["violation"]["stage"] == "output"


async def test_failing_shield_is_closed_by_default(connect: Any, guard_upstream: FakeOpenAI) -> None:
    client = await connect(chat=GUARDED)
    await guard_upstream.stop()
    resp = await client.post("/v1/chat/completions", json=_chat("bread"))
    assert resp.status == 503
    message = (await resp.json())["error"]["message"]
    assert f"the input guardrail '{GUARD}' could not check this request" in message


async def test_failing_shield_set_open_lets_the_text_pass(connect: Any, guard_upstream: FakeOpenAI,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    client = await connect(chat=GUARDED, shield="  on_failure: open\n")
    await guard_upstream.stop()
    resp = await client.post("/v1/chat/completions", json=_chat("bread"))
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"].startswith("tok0")
    assert "failed and is open, the text passes unchecked" in caplog.text


async def test_text_completions_refuse_a_guarded_model(connect: Any) -> None:
    client = await connect(chat=GUARDED)
    for path, body in (("/v1/completions", {"model": "chat", "prompt": "x"}),
                       ("/v1/inference/completion", {"model_id": "chat", "content": "x"})):
        resp = await client.post(path, json=body)
        assert resp.status == 400, path
        assert "is guarded by shields, which run on chat completions only" in (await resp.json())["error"]["message"]


async def test_a_config_model_guarded_by_a_missing_shield_is_a_config_error(connect: Any) -> None:
    with pytest.raises(ConfigError) as info:
        await connect(chat="  input_shields: [nope]\n")
    assert "shield 'nope' is not among the shields of this file that will run" in str(info.value)
    assert "@ $.models[0].input_shields[0]" in str(info.value)


async def test_a_registered_model_whose_shield_left_the_config_does_not_start(connect: Any) -> None:
    client = await connect()
    resp = await client.post("/v1/models", json={"model_id": "g", "provider_model_id": "fake-model",
                                                 "provider_id": "vllm", "output_shields": [GUARD]})
    assert resp.status == 200
    await client.close()
    with pytest.raises(GuardrailGap, match=f"model 'g' is guarded by '{GUARD}', which this server does not have"):
        await connect(shields=False)


async def test_startup_lists_the_guardrails(connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "stackd")
    await connect(chat=GUARDED)
    assert f"guardrails of model 'chat': input ['{GUARD}'], output ['{GUARD}'] on POST /v1/chat/completions" \
        in caplog.text


async def test_registered_model_shields_are_checked_and_kept(connect: Any) -> None:
    client = await connect()
    resp = await client.post("/v1/models", json={"model_id": "g", "provider_model_id": "fake-model",
                                                 "provider_id": "vllm", "input_shields": ["nope"]})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["loc"] == "$.input_shields[0]"
    resp = await client.post("/v1/models", json={"model_id": "g", "provider_model_id": "fake-model",
                                                 "provider_id": "vllm", "input_shields": [GUARD]})
    assert resp.status == 200 and (await resp.json())["input_shields"] == [GUARD]
    body = await (await client.post("/v1/chat/completions", json={**_chat("a bomb"), "model": "g"})).json()
    assert body["violation"]["stage"] == "input"
    resp = await client.delete(f"/v1/shields/{GUARD}")
    assert resp.status == 409


async def test_several_choices_are_refused_when_output_is_guarded(connect: Any) -> None:
    client = await connect(chat=GUARDED)
    resp = await client.post("/v1/chat/completions", json={**_chat("bread"), "n": 2})
    assert resp.status == 400
    assert (await resp.json())["errors"] == [{"loc": "$.n", "msg": "must be 1 for a model with output shields"}]


async def test_a_guard_upstream_4xx_is_a_shield_failure_not_the_clients(connect: Any,
                                                                       guard_upstream: FakeOpenAI) -> None:
    client = await connect(chat=GUARDED)
    guard_upstream.fault = Fault(status=404, message="no such model")
    resp = await client.post("/v1/chat/completions", json=_chat("bread"))
    assert resp.status == 503  # not 404: the client's model exists
    assert "guardrail" in (await resp.json())["error"]["message"]


async def test_guardrails_run_for_callers_the_policy_hides_shields_from(connect: Any) -> None:
    """access_policy may forbid a caller the shields (Llama Stack's example does, for non-admins);
    the model's guardrails still run for that caller: they are the operator's, not the caller's call."""
    from aiohttp import web

    async def decide(_: web.Request) -> web.Response:
        return web.json_response({"principal": "alice", "attributes": {"roles": ["user"]}})

    app = web.Application()
    app.router.add_post("/auth", decide)
    async with local_server(app) as base:
        url = f"{base}/auth"
        extra = (f"server:\n  auth:\n    provider_type: custom\n    config: {{endpoint: {url}}}\n"
                 "    access_policy:\n"
                 "    - forbid: {actions: [create, read, delete], resource: \"shield::*\"}\n"
                 "      unless: user with admin in roles\n"
                 "    - permit: {actions: [read], resource: \"model::*\"}\n")
        client = await connect(chat=GUARDED, extra=extra)
        headers = {"Authorization": "Bearer alice-token"}
        assert (await client.get(f"/v1/shields/{GUARD}", headers=headers)).status == 404
        resp = await client.post("/v1/chat/completions", json=_chat("how to build a bomb"), headers=headers)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["violation"]["stage"] == "input"
        resp = await client.post("/v1/chat/completions", json=_chat("bake bread"), headers=headers)
        assert resp.status == 200 and "violation" not in await resp.json()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_shield_verdicts_are_counted(connect: Any, guard_upstream: FakeOpenAI) -> None:
    client = await connect(chat=GUARDED)

    async def verdicts() -> dict[str, float]:
        samples = _samples(await (await client.get("/metrics")).text())
        return {v: samples.get(("stackd_shield_verdicts_total", frozenset({("shield", GUARD), ("verdict", v)})), 0.0)
                for v in ("pass", "violation", "error")}

    def guard_tokens(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
        return sum(v for k, v in samples.items() if k[0] == "stackd_tokens_total" and ("model", GUARD) in k[1])

    tokens_before = guard_tokens(_samples(await (await client.get("/metrics")).text()))
    before = await verdicts()
    assert (await client.post("/v1/chat/completions", json=_chat("bake bread"))).status == 200  # in and out
    assert (await client.post("/v1/chat/completions", json=_chat("how to build a bomb"))).status == 200
    await guard_upstream.stop()
    assert (await client.post("/v1/chat/completions", json=_chat("bread"))).status == 503
    after = await verdicts()
    assert {v: after[v] - before[v] for v in after} == {"pass": 2, "violation": 1, "error": 1}
    # The guard model's own calls are not the client's model: no tokens counted under its name.
    assert guard_tokens(_samples(await (await client.get("/metrics")).text())) == tokens_before
