"""remote::bedrock against the local Bedrock stand-in (SigV4 verified, a policy evaluated)."""

from __future__ import annotations

from typing import Any

import pytest
from stackd_provider_bedrock.fake import FakeBedrock

SHIELD = "content-guard"


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def _run(client: Any, messages: list[dict[str, Any]], shield: str = SHIELD) -> Any:
    return await client.post("/v1/safety/run-shield", json={"shield_id": shield, "messages": messages})


async def test_safe_input_has_no_violation(connect: Any, bedrock: FakeBedrock) -> None:
    client = await connect()
    resp = await _run(client, _user("how do I bake bread?"))
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"violation": None}
    assert bedrock.requests[-1] == {"source": "INPUT", "texts": ["how do I bake bread?"], "guardrail": "gr-1"}


async def test_blocked_word_and_denied_topic_are_violations(connect: Any) -> None:
    client = await connect()
    violation = (await (await _run(client, _user("build a bomb"))).json())["violation"]
    assert violation["violation_level"] == "error"
    assert violation["user_message"] == "Sorry, I cannot help with that request."
    meta = violation["metadata"]
    assert meta["guardrail_id"] == "gr-1" and meta["guardrail_version"] == "1" and meta["source"] == "INPUT"
    assert meta["assessments"][0]["wordPolicy"]["customWords"][0]["match"] == "bomb"
    violation = (await (await _run(client, _user("which stocks to buy?"))).json())["violation"]
    assert violation["metadata"]["assessments"][0]["topicPolicy"]["topics"][0]["name"] == "Investment advice"


async def test_assistant_turns_are_output(connect: Any, bedrock: FakeBedrock) -> None:
    client = await connect()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "buy these shares"}]
    violation = (await (await _run(client, messages)).json())["violation"]
    assert violation["user_message"] == "Sorry, I cannot share that answer."
    assert bedrock.requests[-1]["source"] == "OUTPUT" and bedrock.requests[-1]["texts"] == ["buy these shares"]


async def test_a_bad_signature_is_refused_and_says_so(connect: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = await connect(secret="wrong-secret")  # the start-up check is refused: a warning, not a crash
    resp = await _run(client, _user("hi"))
    assert resp.status == 503
    message = (await resp.json())["error"]["message"]
    assert "AWS refused the credentials" in message and "signature" in message
    assert "wrong-secret" not in message and "wrong-secret" not in caplog.text


async def test_registration_checks_guardrail_and_version(connect: Any) -> None:
    client = await connect()
    for params, status in (({"guardrailVersion": "1"}, 200), ({"guardrailVersion": "7"}, 404), ({}, 400)):
        resp = await client.post("/v1/shields", json={"shield_id": "s", "provider_shield_id": "gr-1",
                                                      "provider_id": "bedrock", "params": params})
        assert resp.status == status, (params, await resp.text())
    resp = await client.post("/v1/shields", json={"shield_id": "t", "provider_shield_id": "gr-missing",
                                                  "provider_id": "bedrock", "params": {"guardrailVersion": "1"}})
    assert resp.status == 404
    assert "guardrail 'gr-missing' version '1' does not exist" in (await resp.json())["error"]["message"]


async def test_throttling_is_retried_then_503(connect: Any, bedrock: FakeBedrock) -> None:
    client = await connect()
    bedrock.fail_status = 429
    resp = await _run(client, _user("hi"))
    assert resp.status == 503
    assert "HTTP 429" in (await resp.json())["error"]["message"]


async def test_secrets_are_masked_in_providers(connect: Any) -> None:
    client = await connect()
    text = await (await client.get("/v1/providers/bedrock")).text()
    assert "fake-secret" not in text and "********" in text


async def test_moderation_maps_content_filters(connect: Any) -> None:
    client = await connect(extra=f"server:\n  default_moderation_shield: {SHIELD}\n")
    body = await (await client.post("/v1/moderations", json={"input": ["bread", "kill them"]})).json()
    safe, unsafe = body["results"]
    assert safe["flagged"] is False
    assert unsafe["flagged"] is True and unsafe["categories"]["violence"] is True


async def test_guardrail_on_a_chat_model(connect: Any) -> None:
    # inline::echo answers the user's text: an output shield sees it as the assistant's.
    client = await connect(chat=f"  output_shields: [{SHIELD}]\n")
    body = await (await client.post("/v1/chat/completions", json={
        "model": "chat", "messages": [{"role": "user", "content": "tell me which shares to buy"}]})).json()
    assert body["choices"][0]["message"]["content"] == "Sorry, I cannot share that answer."
    assert body["violation"]["stage"] == "output" and body["violation"]["metadata"]["source"] == "OUTPUT"


async def test_default_credential_chain(connect: Any, bedrock: FakeBedrock, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Any) -> None:
    # No keys in the config: botocore's chain finds them (here in the environment), off the loop.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    client = await connect(secret=None)
    violation = (await (await _run(client, _user("a bomb"))).json())["violation"]
    assert violation["metadata"]["guardrail_id"] == "gr-1"


async def test_the_fake_rejects_unsigned_requests(bedrock: FakeBedrock) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(
        f"{bedrock.url}/guardrail/gr-1/version/1/apply", json={"source": "INPUT", "content": []}
    ) as resp:
        assert resp.status == 403
        assert resp.headers["x-amzn-ErrorType"].startswith("InvalidSignatureException")


def test_bad_retries_is_a_config_error() -> None:
    from stackd_provider_bedrock.config import BedrockConfig

    from stackd.convert import structure
    from stackd.errors import BadRequest

    with pytest.raises(BadRequest) as info:
        structure({"retries": -1}, BedrockConfig, "$.providers.safety[0].config")
    assert info.value.errors[0].loc == "$.providers.safety[0].config.retries"
    assert "from 0 to 10" in info.value.errors[0].msg
