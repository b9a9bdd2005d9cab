"""register_model, list_models, health."""

from __future__ import annotations

from typing import Any

import pytest
from stackd_provider_ollama.fake import FakeModel, FakeOllama

from stackd import Model
from stackd.errors import NotFound

from .conftest import make_provider


def model(name: str, **kw: Any) -> Model:
    return Model(identifier=name, provider_id="ollama-test", provider_resource_id=name, **kw)


@pytest.mark.parametrize("name", ["llama3.2", "llama3.2:latest"])
async def test_name_and_name_latest_are_the_same_model(provider: Any, name: str) -> None:
    assert await provider.register_model(model(name)) == model(name)


async def test_tagged_pulled_model_matches_untagged_request_only_for_latest(fake: FakeOllama) -> None:
    fake.models = [FakeModel("qwen2.5:7b"), FakeModel("library/mistral")]
    prov = await make_provider({"url": fake.url})
    try:
        await prov.register_model(model("qwen2.5:7b"))
        await prov.register_model(model("library/mistral:latest"))
        with pytest.raises(NotFound):
            await prov.register_model(model("qwen2.5"))  # means qwen2.5:latest, which is not pulled
    finally:
        await prov.close()


async def test_not_pulled_model_names_ollama_pull_and_lists_models(provider: Any) -> None:
    with pytest.raises(NotFound) as info:
        await provider.register_model(model("gemma3:270m"))
    message = info.value.message
    assert info.value.status == 404
    assert "provider 'ollama-test'" in message
    assert "`ollama pull gemma3:270m`" in message
    assert "(all-minilm:latest, llama3.2:latest)" in message


async def test_embedding_dimension_is_measured_when_missing(provider: Any, fake: FakeOllama) -> None:
    registered = await provider.register_model(model("all-minilm", model_type="embedding", metadata={"x": 1}))
    assert registered.metadata == {"x": 1, "embedding_dimension": 8}
    assert fake.bodies("/api/embed") == [{"model": "all-minilm", "input": ["dimension probe"]}]


async def test_embedding_dimension_given_is_kept_without_a_call(provider: Any, fake: FakeOllama) -> None:
    m = model("all-minilm", model_type="embedding", metadata={"embedding_dimension": 384})
    assert await provider.register_model(m) == m
    assert fake.bodies("/api/embed") == []


async def test_list_models_and_health(provider: Any, fake: FakeOllama) -> None:
    assert await provider.list_models() == ["llama3.2:latest", "all-minilm:latest"]
    assert await provider.health() == {"status": "OK", "version": fake.version}


async def test_health_reports_unreachable(closed_port: int) -> None:
    prov = await make_provider({"url": f"http://127.0.0.1:{closed_port}"})
    try:
        health = await prov.health()
    finally:
        await prov.close()
    assert health["status"] == "Error"
    assert f"cannot connect to http://127.0.0.1:{closed_port}/api/version" in health["message"]
