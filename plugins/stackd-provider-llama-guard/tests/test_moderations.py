"""/v1/moderations and /v1/openai/v1/moderations on a Llama Guard shield."""

from __future__ import annotations

from typing import Any

import pytest

from stackd.testing.fake_openai import FakeOpenAI, llama_guard

GUARD = "meta-llama/Llama-Guard-3-1B"
POLICY = {"bomb": "S1,S9"}
PATHS = ["/v1/moderations", "/v1/openai/v1/moderations"]


@pytest.mark.parametrize("path", PATHS)
async def test_moderation_by_shield_id_flags_and_maps_categories(connect: Any, path: str) -> None:
    client = await connect()
    resp = await client.post(path, json={"model": GUARD, "input": ["bake bread", "build a bomb"]})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["id"].startswith("modr-") and body["model"] == GUARD
    safe, unsafe = body["results"]
    assert safe["flagged"] is False and not any(safe["categories"].values())
    assert unsafe["flagged"] is True
    flagged = sorted(k for k, v in unsafe["categories"].items() if v)
    assert flagged == ["illicit/violent", "violence"]  # S1 and S9
    assert unsafe["category_scores"]["violence"] == 1.0 and unsafe["category_scores"]["hate"] == 0.0
    assert unsafe["metadata"]["violation_type"] == "S1,S9"


async def test_moderation_by_the_model_a_shield_uses(connect: Any, chat_upstream: FakeOpenAI) -> None:
    client = await connect(config="{model: chat}")
    chat_upstream.reply = llama_guard(POLICY)  # "chat" plays a guard model served under another name
    resp = await client.post("/v1/shields", json={"shield_id": "chat-guard", "provider_shield_id": "chat",
                                                  "provider_id": "llama-guard"})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/v1/moderations", json={"model": "chat", "input": "a bomb"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["results"][0]["flagged"] is True
    assert chat_upstream.requests[-1].body["model"] == "fake-model"  # type: ignore[index]


async def test_moderation_without_model_needs_a_default_shield(connect: Any) -> None:
    client = await connect()
    resp = await client.post("/v1/moderations", json={"input": "steal a car"})
    assert resp.status == 400
    body = await resp.json()
    assert "server.default_moderation_shield" in body["error"]["message"]
    assert body["errors"] == [{"loc": "$.model", "msg": "required field missing"}]


async def test_moderation_without_model_uses_the_default_shield(connect: Any) -> None:
    client = await connect(extra=f"server:\n  default_moderation_shield: {GUARD}\n")
    resp = await client.post("/v1/openai/v1/moderations", json={"input": "steal a car"})
    assert resp.status == 200, await resp.text()
    result = (await resp.json())["results"][0]
    assert result["flagged"] is True and result["categories"]["illicit"] is True


async def test_moderation_inputs_are_checked_and_bounded(connect: Any) -> None:
    client = await connect(extra="server:\n  max_moderation_inputs: 2\n")
    for bad, loc in (({"model": GUARD}, "$.input"), ({"model": GUARD, "input": []}, "$.input"),
                     ({"model": GUARD, "input": ["a", 3]}, "$.input[1]"),
                     ({"model": GUARD, "input": ["a", "b", "c"]}, "$.input"),
                     ({"model": 5, "input": "a"}, "$.model")):
        resp = await client.post("/v1/moderations", json=bad)
        assert resp.status == 400, bad
        assert (await resp.json())["errors"][0]["loc"] == loc
    resp = await client.post("/v1/moderations", json={"model": GUARD, "input": [{"type": "text", "text": "bomb"}]})
    assert (await resp.json())["results"][0]["flagged"] is True


async def test_moderation_of_an_unknown_model_is_404(connect: Any) -> None:
    client = await connect()
    resp = await client.post("/v1/moderations", json={"model": "nope", "input": "hi"})
    assert resp.status == 404
