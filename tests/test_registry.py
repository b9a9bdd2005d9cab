"""The registry through a real stack: config reconciliation, persistence, conflicts and access."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stackd import Caller
from stackd.errors import BadRequest, Conflict, Forbidden, NotFound
from stackd.kvstore.sqlite import SqliteKVStore
from stackd.loading import parse_config
from stackd.registry import Registry, can_access
from stackd.stack import open_stack


def run_yaml(db: Path, models: str) -> str:
    return f"""\
apis: [inference]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {{models: [echo-1, echo-2]}}
metadata_store: {{type: sqlite, db_path: {db}}}
inference_store: {{type: sqlite, db_path: {db.parent / 'store.db'}}}
models: {models}
"""


ALICE = Caller(principal="alice", attributes={"teams": ("a",)})
BOB = Caller(principal="bob", attributes={"teams": ("b",)})


async def test_config_models_are_reconciled_and_api_models_persist(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    first = parse_config(run_yaml(db, "\n- model_id: one\n  provider_model_id: echo-1\n"
                                      "- model_id: two\n  provider_model_id: echo-2\n"), env={})
    async with open_stack(first) as stack:
        assert sorted(m.identifier for m in await stack.registry.list_models(Caller())) == ["one", "two"]
        added = await stack.registry.register_model(Caller(), "echo-2")
        assert (added.provider_id, added.provider_resource_id, added.source) == ("echo", "echo-2", "api")

    second = parse_config(run_yaml(db, "\n- model_id: one\n  provider_model_id: echo-1\n"), env={})
    async with open_stack(second) as stack:
        # "two" left the file, so it is gone; the API registration stays.
        assert sorted(m.identifier for m in await stack.registry.list_models(Caller())) == ["echo-2", "one"]
        with pytest.raises(NotFound, match="model 'two' not found"):
            await stack.registry.get_model("two", Caller())


async def test_registration_rules(tmp_path: Path) -> None:
    loaded = parse_config(run_yaml(tmp_path / "r.db", "\n- model_id: one\n  provider_model_id: echo-1\n"), env={})
    async with open_stack(loaded) as stack:
        registry = stack.registry
        with pytest.raises(NotFound, match="does not serve 'gpt-4'; it serves: echo-1, echo-2"):
            await registry.register_model(Caller(), "gpt-4")
        with pytest.raises(BadRequest, match="embedding_dimension") as info:
            await registry.register_model(Caller(), "e", "echo-1", model_type="embedding")
        assert info.value.errors[0].loc == "$.metadata.embedding_dimension"
        with pytest.raises(NotFound, match="no inference provider with provider_id 'vllm'"):
            await registry.register_model(Caller(), "x", "echo-1", provider_id="vllm")
        # same identifier, same provider: an update, not a conflict
        again = await registry.register_model(Caller(), "one", "echo-2")
        assert again.provider_resource_id == "echo-2"


async def test_conflict_with_another_provider(tmp_path: Path) -> None:
    text = run_yaml(tmp_path / "r.db", "\n- model_id: one\n  provider_id: echo\n  provider_model_id: echo-1\n")
    text = text.replace("metadata_store:", "  - provider_id: echo2\n    provider_type: inline::echo\n"
                        "    config: {models: [echo-1]}\nmetadata_store:")
    async with open_stack(parse_config(text, env={})) as stack:
        with pytest.raises(Conflict, match="already registered with provider 'echo'"):
            await stack.registry.register_model(Caller(), "one", "echo-1", provider_id="echo2")


async def test_owned_resources_are_hidden_from_others(tmp_path: Path) -> None:
    loaded = parse_config(run_yaml(tmp_path / "r.db", "[]"), env={})
    async with open_stack(loaded) as stack:
        registry = stack.registry
        await registry.register_model(ALICE, "mine", "echo-1")
        assert [m.identifier for m in await registry.list_models(ALICE)] == ["mine"]
        assert await registry.list_models(BOB) == []
        with pytest.raises(NotFound):
            await registry.get_model("mine", BOB)
        with pytest.raises(NotFound):
            await registry.unregister_model("mine", BOB)
        with pytest.raises(Forbidden):
            await registry.register_model(BOB, "mine", "echo-2")
        await registry.unregister_model("mine", ALICE)
        assert await registry.list_models(ALICE) == []


def test_access_rule() -> None:
    owner = {"roles": ["admin", "ops"], "teams": ["ml"]}
    assert can_access(None, Caller())
    assert can_access(owner, Caller(attributes={"roles": ("ops",), "teams": ("ml", "x")}))
    assert not can_access(owner, Caller(attributes={"roles": ("ops",)}))
    assert not can_access(owner, Caller())


async def test_replicas_sharing_a_store_see_each_others_registrations(tmp_path: Path) -> None:
    # A second stack on one SQLite store is refused (test_state.py); replicas share a store
    # through a second connection, as they will through Redis or PostgreSQL.
    text = run_yaml(tmp_path / "shared.db", "[]")
    async with open_stack(parse_config(text, env={})) as a:
        kv = await SqliteKVStore.open(tmp_path / "shared.db")
        b = Registry(kv, a.providers, {"echo": "inference"})
        b.models.ttl = 0.05
        await a.registry.register_model(Caller(), "shared", "echo-1")
        assert [m.identifier for m in await b.list_models(Caller())] == ["shared"]
        assert (await b.get_model("shared", Caller())).provider_resource_id == "echo-1"
        await a.registry.unregister_model("shared", Caller())
        await asyncio.sleep(0.1)  # b's cached entry is trusted for its ttl only
        with pytest.raises(NotFound):
            await b.get_model("shared", Caller())
        await kv.close()
