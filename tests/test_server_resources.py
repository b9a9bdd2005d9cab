"""Models and shields over HTTP: list, get, register, unregister, persistence across restarts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from aiohttp.test_utils import TestClient

from stackd import ProviderSpec
from stackd.apis.models import Shield
from stackd.errors import NotFound
from stackd.loading import LoadedConfig, parse_config
from stackd.providers.discovery import Catalog

Client = TestClient[Any, Any]

LS_MODEL_FIELDS = {"identifier", "provider_resource_id", "provider_id", "type", "model_type", "metadata", "owner"}
OPENAI_MODEL_FIELDS = {"id", "object", "created", "owned_by"}
SLASHED = "meta-llama/Llama-3.2-3B"


async def test_list_models_serves_both_clients(client: Client) -> None:
    resp = await client.get("/v1/models")
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list"
    by_id = {m["identifier"]: m for m in body["data"]}
    assert set(by_id) == {"echo-1", SLASHED, "echo-embed"}
    for ident, m in by_id.items():
        assert set(m) >= LS_MODEL_FIELDS | OPENAI_MODEL_FIELDS
        assert m["type"] == "model"
        assert m["id"] == ident
        assert m["object"] == "model"
        assert isinstance(m["created"], int) and m["created"] > 1_600_000_000
        assert m["owned_by"] == "echo"
        assert m["provider_id"] == "echo"
        assert m["provider_resource_id"] == ident
    assert by_id["echo-embed"]["model_type"] == "embedding"
    assert by_id["echo-embed"]["metadata"] == {"embedding_dimension": 8}
    assert by_id["echo-1"]["model_type"] == "llm"
    # The OpenAI prefix of Llama Stack 0.2.x lists the same models.
    resp = await client.get("/v1/openai/v1/models")
    assert {m["id"] for m in (await resp.json())["data"]} == set(by_id)


async def test_get_model_with_slashes(client: Client) -> None:
    for prefix in ("/v1", "/v1/openai/v1"):
        resp = await client.get(f"{prefix}/models/{SLASHED}")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["identifier"] == SLASHED
        assert body["id"] == SLASHED


async def test_unknown_model_is_404(client: Client) -> None:
    for path in ("/v1/models/nope", "/v1/models/org/nope"):
        resp = await client.get(path)
        assert resp.status == 404
        body = await resp.json()
        assert "nope" in body["error"]["message"]
        assert body["error"]["type"]
    resp = await client.delete("/v1/models/nope")
    assert resp.status == 404


async def test_register_with_defaults(client: Client) -> None:
    resp = await client.post("/v1/models", json={"model_id": "echo-2"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["identifier"] == "echo-2"
    assert body["provider_resource_id"] == "echo-2"  # provider_model_id <- model_id
    assert body["provider_id"] == "echo"  # the only inference provider
    assert body["model_type"] == "llm"
    assert body["type"] == "model"
    assert body["id"] == "echo-2"
    resp = await client.get("/v1/models/echo-2")
    assert (await resp.json())["provider_id"] == "echo"
    resp = await client.get("/v1/models")
    assert "echo-2" in {m["id"] for m in (await resp.json())["data"]}


async def test_registered_alias_serves_requests(client: Client) -> None:
    resp = await client.post("/v1/models", json={"model_id": "team/alias", "provider_model_id": "echo-2"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["provider_resource_id"] == "echo-2"
    resp = await client.post("/v1/chat/completions", json={
        "model": "team/alias", "messages": [{"role": "user", "content": "via alias"}]})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == "team/alias"
    assert body["choices"][0]["message"]["content"] == "via alias"


async def test_register_embedding_needs_dimension(client: Client) -> None:
    resp = await client.post("/v1/models", json={"model_id": "echo-2", "model_type": "embedding"})
    assert resp.status == 400
    body = await resp.json()
    assert "embedding_dimension" in body["error"]["message"]
    assert any("embedding_dimension" in e["loc"] for e in body["errors"]), body
    # Nothing was registered.
    assert (await client.get("/v1/models/echo-2")).status == 404
    resp = await client.post("/v1/models", json={
        "model_id": "echo-2", "model_type": "embedding", "metadata": {"embedding_dimension": 8}})
    assert resp.status == 200
    assert (await resp.json())["model_type"] == "embedding"


async def test_provider_rejects_unknown_model(client: Client) -> None:
    resp = await client.post("/v1/models", json={"model_id": "not-served-anywhere"})
    assert resp.status == 404
    body = await resp.json()
    assert "not-served-anywhere" in body["error"]["message"]
    assert (await client.get("/v1/models/not-served-anywhere")).status == 404


async def test_register_with_unknown_provider(client: Client) -> None:
    resp = await client.post("/v1/models", json={"model_id": "echo-2", "provider_id": "ghost"})
    assert resp.status == 404
    assert "ghost" in (await resp.json())["error"]["message"]


async def test_unregister(client: Client) -> None:
    resp = await client.delete(f"/v1/models/{SLASHED}")
    assert resp.status == 200, await resp.text()
    assert (await client.get(f"/v1/models/{SLASHED}")).status == 404
    resp = await client.get("/v1/models")
    assert SLASHED not in {m["id"] for m in (await resp.json())["data"]}
    assert (await client.delete(f"/v1/models/{SLASHED}")).status == 404
    # A request to it is now a 404 too.
    resp = await client.post("/v1/chat/completions", json={"model": SLASHED, "messages": [{"role": "user",
                                                                                            "content": "x"}]})
    assert resp.status == 404


TWO_PROVIDERS = """\
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {models: [echo-1, shared]}
  - provider_id: echo-b
    provider_type: inline::echo
    config: {models: [shared], prefix: "b: "}
"""


async def test_two_providers_conflict_and_required_provider_id(
    serve_app: Any, write_config: Callable[..., Path]
) -> None:
    path = write_config(providers=TWO_PROVIDERS, models="- {model_id: echo-1, provider_id: echo}\n")
    async with TestClient(await serve_app(path)) as c:
        resp = await c.post("/v1/models", json={"model_id": "shared"})
        assert resp.status == 400
        body = await resp.json()
        assert [e["loc"] for e in body["errors"]] == ["$.provider_id"]
        assert "echo" in body["error"]["message"] and "echo-b" in body["error"]["message"]

        resp = await c.post("/v1/models", json={"model_id": "shared", "provider_id": "echo"})
        assert resp.status == 200
        resp = await c.post("/v1/models", json={"model_id": "shared", "provider_id": "echo-b"})
        assert resp.status == 409
        assert "echo" in (await resp.json())["error"]["message"]
        # Registering again with the same provider is not a conflict.
        resp = await c.post("/v1/models", json={"model_id": "shared", "provider_id": "echo"})
        assert resp.status == 200
        assert (await (await c.get("/v1/models/shared")).json())["provider_id"] == "echo"


async def test_api_registrations_survive_restart_config_removals_do_not(
    serve_app: Any, write_config: Callable[..., Path], yaml_for: Callable[..., str]
) -> None:
    path = write_config()
    server = await serve_app(path)
    async with TestClient(server) as c:
        assert (await c.post("/v1/models", json={"model_id": "echo-2"})).status == 200
        assert (await c.post("/v1/models", json={"model_id": "org/aliased", "provider_model_id": "echo-1"})
                ).status == 200
    await server.close()

    # The operator removes the slashed model from the file and restarts.
    path.write_text(yaml_for(models="- model_id: echo-1\n"), encoding="utf-8")
    async with TestClient(await serve_app(path)) as c:
        ids = {m["id"] for m in (await (await c.get("/v1/models")).json())["data"]}
        assert ids == {"echo-1", "echo-2", "org/aliased"}
        assert (await c.get(f"/v1/models/{SLASHED}")).status == 404
        aliased = await (await c.get("/v1/models/org/aliased")).json()
        assert aliased["provider_resource_id"] == "echo-1"
        resp = await c.post("/v1/chat/completions", json={
            "model": "echo-2", "messages": [{"role": "user", "content": "still here"}]})
        assert (await resp.json())["choices"][0]["message"]["content"] == "still here"


# ---- shields: a keyword safety provider declared in the test (no safety plugin ships in the core) ----


@attrs.frozen
class KeywordConfig:
    shields: list[str] = attrs.field(factory=lambda: ["kw"])
    blocked: list[str] = attrs.field(factory=lambda: ["forbidden"])


class KeywordSafety:
    def __init__(self, config: KeywordConfig) -> None:
        self.config = config

    async def register_shield(self, shield: Shield) -> Shield:
        if shield.provider_resource_id not in self.config.shields:
            raise NotFound(f"keyword provider has no shield {shield.provider_resource_id!r}")
        return shield

    async def run_shield(self, shield: Shield, messages: list[dict[str, Any]], params: dict[str, Any],
                         ctx: Any) -> dict[str, Any]:
        text = " ".join(str(m.get("content", "")) for m in messages)
        hit = [w for w in self.config.blocked if w in text]
        if not hit:
            return {"violation": None}
        return {"violation": {"violation_level": "error", "user_message": "blocked", "metadata": {"words": hit}}}


async def _keyword_factory(config: KeywordConfig, deps: Mapping[str, Any]) -> KeywordSafety:
    return KeywordSafety(config)


KEYWORD = ProviderSpec(contract=1, api="safety", provider_type="inline::keyword", config_class=KeywordConfig,
                       factory=_keyword_factory)


def _with_safety(yaml_for: Callable[..., str], shields: str) -> LoadedConfig:
    catalog = Catalog.from_entry_points()
    catalog.plugins.update(Catalog.from_specs([KEYWORD], distribution="tests").plugins)
    providers = """\
  inference:
  - provider_id: echo
    provider_type: inline::echo
  safety:
  - provider_id: kw
    provider_type: inline::keyword
    config: {shields: [kw, meta-llama/Llama-Guard-3-1B, other]}
"""
    text = yaml_for(apis="[inference, safety]", providers=providers, models="- model_id: echo-1\n",
                    extra=f"shields:\n{shields}")
    return parse_config(text, catalog=catalog)


async def test_shields_crud(serve_app: Any, yaml_for: Callable[..., str]) -> None:
    loaded = _with_safety(yaml_for, "- shield_id: meta-llama/Llama-Guard-3-1B\n")
    async with TestClient(await serve_app(loaded)) as c:
        resp = await c.get("/v1/shields")
        assert resp.status == 200
        (guard,) = (await resp.json())["data"]
        assert guard == {"identifier": "meta-llama/Llama-Guard-3-1B",
                         "provider_resource_id": "meta-llama/Llama-Guard-3-1B",
                         "provider_id": "kw", "type": "shield", "params": {}, "owner": None}
        resp = await c.get("/v1/shields/meta-llama/Llama-Guard-3-1B")
        assert resp.status == 200
        assert (await resp.json())["identifier"] == "meta-llama/Llama-Guard-3-1B"

        resp = await c.post("/v1/shields", json={"shield_id": "my-shield", "provider_shield_id": "kw",
                                                  "params": {"level": 2}})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["provider_id"] == "kw"  # the only safety provider
        assert body["provider_resource_id"] == "kw"
        assert body["params"] == {"level": 2}

        resp = await c.post("/v1/shields", json={"shield_id": "other"})
        assert (await resp.json())["provider_resource_id"] == "other"  # provider_shield_id <- shield_id

        resp = await c.post("/v1/safety/run-shield", json={
            "shield_id": "my-shield", "messages": [{"role": "user", "content": "this is forbidden"}],
            "params": {}})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["violation"]["user_message"] == "blocked"

        resp = await c.post("/v1/shields", json={"shield_id": "unknown-to-provider"})
        assert resp.status == 404
        assert "unknown-to-provider" in (await resp.json())["error"]["message"]

        ids = {s["identifier"] for s in (await (await c.get("/v1/shields")).json())["data"]}
        assert ids == {"meta-llama/Llama-Guard-3-1B", "my-shield", "other"}

        assert (await c.delete("/v1/shields/my-shield")).status == 200
        assert (await c.get("/v1/shields/my-shield")).status == 404
        assert (await c.delete("/v1/shields/my-shield")).status == 404
        assert (await c.get("/v1/shields/never")).status == 404

        resp = await c.post("/v1/shields", json={"shield_id": 5})
        assert resp.status == 400
        assert [e["loc"] for e in (await resp.json())["errors"]] == ["$.shield_id"]
