"""The real ``llama-stack-client`` 0.2.12 against a real ``stackd serve`` process."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stackd

NATIVE_ROUTES = Path(stackd.__file__).parent / "server" / "routes_native.py"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("llama_stack_client") is None,
                       reason="llama-stack-client==0.2.12 (+ fire, requests) is not installed"),
    pytest.mark.skipif(not NATIVE_ROUTES.is_file(),
                       reason="the native Llama Stack routes (stackd/server/routes_native.py) are not written yet"),
]

SLASHED = "meta-llama/Llama-3.2-3B"
USER = [{"role": "user", "content": "native hello"}]


@pytest.fixture
def base_url(stackd_serve: Callable[..., Any], write_config: Callable[..., Path], port: Callable[[], int]
             ) -> Iterator[str]:
    p = port()
    proc = stackd_serve(str(write_config()), "--port", str(p))
    proc.wait_serving()
    yield f"http://127.0.0.1:{p}"
    assert proc.stop() == 0


@pytest.fixture
def ls(base_url: str) -> Iterator[Any]:
    from llama_stack_client import LlamaStackClient

    with LlamaStackClient(base_url=base_url, max_retries=0, timeout=10) as client:
        yield client


def test_models(ls: Any) -> None:
    import llama_stack_client

    models = {m.identifier: m for m in ls.models.list()}
    assert set(models) == {"echo-1", SLASHED, "echo-embed"}
    assert models["echo-embed"].model_type == "embedding"
    assert models["echo-1"].provider_id == "echo"

    got = ls.models.retrieve(SLASHED)
    assert got.identifier == SLASHED and got.provider_resource_id == SLASHED

    registered = ls.models.register(model_id="org/echo-two", provider_model_id="echo-2")
    assert registered.identifier == "org/echo-two"
    assert registered.provider_id == "echo"
    assert registered.provider_resource_id == "echo-2"
    assert ls.models.retrieve("org/echo-two").provider_resource_id == "echo-2"

    ls.models.unregister("org/echo-two")
    with pytest.raises(llama_stack_client.NotFoundError):
        ls.models.retrieve("org/echo-two")
    with pytest.raises(llama_stack_client.BadRequestError):
        ls.models.register(model_id="echo-2", model_type="embedding")


def test_providers_inspect_and_health(ls: Any, secret: str) -> None:
    (provider,) = ls.providers.list()
    assert provider.provider_id == "echo"
    assert provider.provider_type == "inline::echo"
    assert provider.api == "inference"
    assert provider.config["api_key"] == "********"
    assert secret not in str(provider.config)
    routes = ls.routes.list()
    assert any(r.route == "/v1/inference/chat-completion" and r.method == "POST"
               and r.provider_types == ["inline::echo"] for r in routes)
    assert ls.inspect.health().status == "OK"
    assert ls.inspect.version().version


def test_native_chat_completion(ls: Any) -> None:
    out = ls.inference.chat_completion(model_id="echo-1", messages=USER)
    assert out.completion_message.content == "native hello"
    assert out.completion_message.stop_reason == "end_of_turn"

    events = list(ls.inference.chat_completion(model_id=SLASHED, messages=USER, stream=True))
    assert events[0].event.event_type == "start"
    assert events[-1].event.event_type == "complete"
    text = "".join(e.event.delta.text for e in events if e.event.delta.type == "text")
    assert text == "native hello"

    import llama_stack_client

    with pytest.raises(llama_stack_client.NotFoundError) as info:
        ls.inference.chat_completion(model_id="ghost", messages=USER)
    assert "ghost" in str(info.value)


def test_native_completion_and_embeddings(ls: Any) -> None:
    out = ls.inference.completion(model_id="echo-1", content="one two")
    assert out.content == "one two"
    emb = ls.inference.embeddings(model_id="echo-embed", contents=["a", "b"])
    assert len(emb.embeddings) == 2 and all(len(v) == 8 for v in emb.embeddings)


def test_openai_routes_through_the_llama_stack_client(ls: Any) -> None:
    # The client parses SSE itself and fails on [DONE]: a clean end here shows it was not sent.
    chunks = list(ls.chat.completions.create(model="echo-1", messages=USER, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "native hello"


def test_provider_data_from_the_client(base_url: str) -> None:
    from llama_stack_client import LlamaStackClient

    with LlamaStackClient(base_url=base_url, provider_data={"echo_suffix": "tail"}, max_retries=0) as client:
        out = client.inference.chat_completion(model_id="echo-1", messages=USER)
        assert out.completion_message.content == "native hello tail"
