"""server.auth.access_policy (Llama Stack 0.2.12's rules) and the default owner rule, through a
real server with the custom authenticator: two users in different teams, and the policy of
API.md §4 rule by rule."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from stackd.auth.policy import AccessPolicy, Owner
from stackd.caller import Caller
from stackd.config.auth import AccessRule
from stackd.convert import structure
from stackd.testing.local_server import local_server

USERS = {
    "tok-alice": {"principal": "alice", "attributes": {"teams": ["red"], "roles": ["user"]}},
    "tok-bob": {"principal": "bob", "attributes": {"teams": ["blue"], "roles": ["user"]}},
    "tok-carol": {"principal": "carol", "attributes": {"teams": ["red"], "roles": ["user", "admin"]}},
    "tok-user1": {"principal": "user-1", "attributes": {"teams": ["green"]}},
}

LLAMA_STACK_POLICY = """\
    access_policy:
    - permit: {principal: user-1, actions: [create, read, delete], resource: "model::*"}
      description: user-1 has full access to all models
    - permit: {actions: [read]}
      when: user in owners teams
    - forbid: {actions: [create, read, delete], resource: "shield::*"}
      unless: user with admin in roles
    - permit: {actions: [create, read, delete], resource: "shield::*"}
      when: user with admin in roles
    - permit: {actions: [create]}
      when: user with user in roles
    - permit: {actions: [delete]}
      when: user is owner
"""


@pytest.fixture
async def endpoint() -> AsyncIterator[str]:
    async def decide(request: web.Request) -> web.Response:
        answer = USERS.get((await request.json())["api_key"])
        return web.json_response(answer or {"message": "unknown"}, status=200 if answer else 401)

    app = web.Application()
    app.router.add_post("/auth", decide)
    async with local_server(app) as base:
        yield f"{base}/auth"


@pytest.fixture
def make_client(serve_app: Any, write_config: Callable[..., Path], endpoint: str) -> Callable[..., Any]:
    async def make(policy: str = "") -> TestClient[web.Request, web.Application]:
        server = f"  auth:\n    provider_type: custom\n    config:\n      endpoint: {endpoint}\n{policy}"
        return TestClient(await serve_app(write_config(server=server)))

    return make


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ids(c: TestClient[web.Request, web.Application], token: str, what: str = "models") -> set[str]:
    resp = await c.get(f"/v1/{what}", headers=as_(token))
    assert resp.status == 200
    return {m["identifier"] for m in (await resp.json())["data"]}


async def test_two_teams_default_policy(make_client: Any) -> None:
    async with await make_client() as c:
        resp = await c.post("/v1/models", json={"model_id": "red-model", "provider_id": "echo",
                                                 "provider_model_id": "echo-2"}, headers=as_("tok-alice"))
        assert resp.status == 200
        resp = await c.post("/v1/models", json={"model_id": "blue-model", "provider_id": "echo",
                                                 "provider_model_id": "echo-2"}, headers=as_("tok-bob"))
        assert resp.status == 200
        assert "red-model" in await ids(c, "tok-alice") and "blue-model" not in await ids(c, "tok-alice")
        assert "blue-model" in await ids(c, "tok-bob") and "red-model" not in await ids(c, "tok-bob")
        assert "echo-1" in await ids(c, "tok-bob")  # config models are everyone's
        # Hidden is 404 on get, use and delete: never confirm it exists.
        assert (await c.get("/v1/models/red-model", headers=as_("tok-bob"))).status == 404
        assert (await c.delete("/v1/models/red-model", headers=as_("tok-bob"))).status == 404
        chat = {"model": "red-model", "messages": [{"role": "user", "content": "hi"}]}
        assert (await c.post("/v1/chat/completions", json=chat, headers=as_("tok-bob"))).status == 404
        assert (await c.post("/v1/chat/completions", json=chat, headers=as_("tok-alice"))).status == 200
        # Registering another's id again never takes it over.
        resp = await c.post("/v1/models", json={"model_id": "red-model", "provider_id": "echo"},
                            headers=as_("tok-bob"))
        assert resp.status == 403
        # A teammate re-registers: the owner stays alice's.
        resp = await c.post("/v1/models", json={"model_id": "red-model", "provider_id": "echo",
                                                 "provider_model_id": "echo-1"}, headers=as_("tok-carol"))
        assert resp.status == 200
        assert (await resp.json())["owner"] == {"teams": ["red"], "roles": ["user"]}


async def test_llama_stack_policy_rule_by_rule(make_client: Any) -> None:
    async with await make_client(LLAMA_STACK_POLICY) as c:
        body = {"model_id": "m-alice", "provider_id": "echo", "provider_model_id": "echo-2"}
        # rule 5: a user may create; rule 2: teammates read what their team owns.
        assert (await c.post("/v1/models", json=body, headers=as_("tok-alice"))).status == 200
        assert "m-alice" in await ids(c, "tok-carol")
        assert "m-alice" not in await ids(c, "tok-bob")
        # rule 1: user-1 reads, and deletes, every model, owned by anyone.
        assert "m-alice" in await ids(c, "tok-user1")
        # rule 6: only the owner deletes; carol (same team, not owner) may read but not delete: 403.
        assert (await c.delete("/v1/models/m-alice", headers=as_("tok-carol"))).status == 403
        assert (await c.delete("/v1/models/m-alice", headers=as_("tok-bob"))).status == 404
        assert (await c.delete("/v1/models/m-alice", headers=as_("tok-alice"))).status == 200
        assert (await c.post("/v1/models", json=body, headers=as_("tok-alice"))).status == 200
        assert (await c.delete("/v1/models/m-alice", headers=as_("tok-user1"))).status == 200
        # rule 5 does not reach user-1 (no user role) and rule 1 covers models only.
        body = {"model_id": "m-user1", "provider_id": "echo", "provider_model_id": "echo-2"}
        assert (await c.post("/v1/models", json=body, headers=as_("tok-user1"))).status == 200
        assert (await c.post("/v1/models", json=body | {"model_id": "x"}, headers=as_("tok-bob"))).status == 200


def test_llama_stack_policy_shield_rules() -> None:
    """Rules 3 and 4 (shields): the echo plugin serves no safety API, so they are checked here."""
    import io

    from ruamel.yaml import YAML

    rules = [rule(r) for r in YAML(typ="safe").load(io.StringIO(LLAMA_STACK_POLICY))["access_policy"]]
    policy = AccessPolicy(rules)
    admin = Caller("carol", {"roles": ("user", "admin"), "teams": ("red",)})
    user = Caller("alice", {"roles": ("user",), "teams": ("red",)})
    blue = Owner("bob", {"teams": ["blue"]})
    for action in ("create", "read", "delete"):
        assert policy.allows(admin, action, "shield", "s1", blue), action
        assert not policy.allows(user, action, "shield", "s1", blue), action
    # First match wins: rule 2 lets a team read its own shields before rule 3 is tried.
    assert policy.allows(user, "read", "shield", "s1", Owner("carol", {"teams": ["red"]}))


def rule(data: dict[str, Any]) -> AccessRule:
    return structure(data, AccessRule)


def test_conditions_one_by_one() -> None:
    alice = Caller("alice", {"teams": ("red",), "roles": ("admin",)})
    bob = Caller("bob", {"teams": ("blue",)})
    owned = Owner("alice", {"teams": ["red"]})
    cases: list[tuple[str, Caller, Owner | None, bool]] = [
        ("user with admin in roles", alice, owned, True),
        ("user with admin in roles", bob, owned, False),
        ("user with admin not in roles", bob, owned, True),
        ("user is owner", alice, owned, True),
        ("user is owner", bob, owned, False),
        ("user is not owner", bob, owned, True),
        ("user in owners teams", alice, owned, True),
        ("user in owners teams", bob, owned, False),
        ("user in owners teams", bob, None, True),
        ("user not in owners teams", bob, owned, True),
        ("resource is unowned", bob, None, True),
        ("resource is unowned", bob, owned, False),
    ]
    for condition, caller, owner, expected in cases:
        policy = AccessPolicy([rule({"permit": {"actions": ["read"]}, "when": condition})])
        assert policy.allows(caller, "read", "model", "m", owner) is expected, condition
        unless = AccessPolicy([rule({"permit": {"actions": ["read"]}, "unless": condition})])
        assert unless.allows(caller, "read", "model", "m", owner) is (not expected), condition


def test_scope_and_order() -> None:
    policy = AccessPolicy([
        rule({"forbid": {"actions": "delete", "resource": "model::keep"}}),
        rule({"permit": {"principal": "alice", "actions": ["read", "delete"], "resource": "model::*"}}),
    ])
    alice = Caller("alice")
    assert policy.allows(alice, "read", "model", "x", None)
    assert not policy.allows(alice, "delete", "model", "keep", None)  # first match wins
    assert not policy.allows(alice, "read", "shield", "x", None)  # no rule: deny
    assert not policy.allows(Caller("bob"), "read", "model", "x", None)


@pytest.mark.parametrize(("text", "expected"), [
    ("- permit: {actions: [read]}\n  when: user in teams\n",
     "expected a condition: 'user with <value> in <category>'"),
    ("- permit: {actions: [fly]}\n", "expected one of 'create', 'read', 'update', 'delete', got 'fly'"),
    ("- permit: {actions: [read], resource: model}\n", "expected a resource as 'kind::id' or 'kind::*'"),
    ("- description: nothing\n", "a rule needs exactly one of permit or forbid"),
])
def test_a_rule_that_does_not_parse_is_a_config_error_at_its_path(
        write_config: Callable[..., Path], text: str, expected: str) -> None:
    from stackd.config.loader import read_config

    policy = "".join("      " + line + "\n" for line in text.splitlines())
    path = write_config(server="  auth:\n    provider_type: custom\n    config: {endpoint: http://127.0.0.1:1/a}\n"
                        "    access_policy:\n" + policy)
    report = read_config(path).report
    errors = [str(p) for p in report.problems]
    assert any(expected in e and "$.server.auth.access_policy[0]" in e for e in errors), errors


def test_a_route_rule_naming_no_route_is_a_warning(write_config: Callable[..., Path]) -> None:
    from stackd.config.loader import read_config

    path = write_config(server="  auth:\n    provider_type: custom\n    config: {endpoint: http://127.0.0.1:1/a}\n"
                        "    route_policy:\n    - routes: [/v1/modles, /v1/models]\n")
    warnings = [str(p) for p in read_config(path).report.warnings]
    assert any("'/v1/modles' names no route" in w and "route_policy[0].routes[0]" in w for w in warnings), warnings
    assert not any("routes[1]" in w for w in warnings)


async def _chat(c: TestClient[web.Request, web.Application], token: str, text: str, stream: bool = False) -> str:
    body = {"model": "echo-1", "messages": [{"role": "user", "content": text}], "stream": stream}
    resp = await c.post("/v1/chat/completions", json=body, headers=as_(token))
    assert resp.status == 200
    if not stream:
        return str((await resp.json())["id"])
    first = next(line for line in (await resp.text()).splitlines() if line.startswith("data: {"))
    import json

    return str(json.loads(first[6:])["id"])


async def test_stored_completions_are_their_owners(make_client: Any) -> None:
    async with await make_client() as c:
        mine = [await _chat(c, "tok-alice", f"alice {i}", stream=i % 2 == 1) for i in range(5)]
        theirs = [await _chat(c, "tok-bob", f"bob {i}") for i in range(4)]
        # Pages of 2 reach every one of alice's, and none of bob's.
        seen: list[str] = []
        after: str | None = None
        while True:
            query = "?limit=2" + (f"&after={after}" if after else "")
            resp = await c.get(f"/v1/chat/completions{query}", headers=as_("tok-alice"))
            page = await resp.json()
            seen += [item["id"] for item in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert sorted(seen) == sorted(mine)
        for cid in theirs:
            for path in (f"/v1/chat/completions/{cid}", f"/v1/chat/completions/{cid}/messages",
                         f"/v1/openai/v1/chat/completions/{cid}"):
                resp = await c.get(path, headers=as_("tok-alice"))
                assert resp.status == 404, path
            assert (await c.get(f"/v1/chat/completions/{cid}", headers=as_("tok-bob"))).status == 200
        resp = await c.get(f"/v1/chat/completions/{mine[0]}/messages", headers=as_("tok-alice"))
        assert resp.status == 200 and (await resp.json())["data"][0]["content"] == "alice 0"


async def test_stored_completions_follow_access_policy(make_client: Any) -> None:
    policy = ('    access_policy:\n    - permit: {actions: [read], resource: "model::*"}\n'
              '    - permit: {actions: [read], resource: "chat_completion::*"}\n'
              '      when: user is owner\n')
    async with await make_client(policy) as c:
        cid = await _chat(c, "tok-alice", "private")
        assert (await c.get(f"/v1/chat/completions/{cid}", headers=as_("tok-alice"))).status == 200
        assert (await c.get(f"/v1/chat/completions/{cid}", headers=as_("tok-carol"))).status == 404
        listed = await (await c.get("/v1/chat/completions", headers=as_("tok-carol"))).json()
        assert listed["data"] == []


async def test_a_store_without_owners_gains_the_column_and_keeps_first_owner(tmp_path: Path) -> None:
    import sqlite3

    from stackd.inference_store.sqlite import SqliteInferenceStore

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the schema of stackd 0.1.0
        conn.execute("CREATE TABLE chat_completions (id TEXT PRIMARY KEY, created INTEGER NOT NULL, "
                     "model TEXT NOT NULL, body TEXT NOT NULL, input_messages TEXT NOT NULL)")
        conn.execute("INSERT INTO chat_completions VALUES ('old', 1, 'm', '{\"id\": \"old\", \"created\": 1, "
                     "\"model\": \"m\"}', '[]')")
    store = await SqliteInferenceStore.open(db)
    try:
        def nobody(_cid: str, owner: str | None) -> bool:
            return owner is None

        assert (await store.get("old", visible=nobody))["id"] == "old"  # unowned, as before
        body = {"id": "x", "created": 2, "model": "m", "choices": []}
        await store.store_many([(body, [], '{"principal": "alice", "attributes": null}')])
        await store.store_many([(body | {"model": "stolen"}, [], '{"principal": "bob", "attributes": null}')])
        assert (await store.get("x"))["model"] == "m"  # a repeated id does not change hands
    finally:
        await store.close()


def test_route_policy_is_one_setting(write_config: Callable[..., Path]) -> None:
    from stackd.config.loader import read_config

    auth = "  auth:\n    provider_type: custom\n    config: {endpoint: http://127.0.0.1:1/a}\n"
    old = "  route_policy:\n  - routes: [/v1/models]\n"
    report = read_config(write_config(server=auth + old)).report
    assert any("deprecated with auth on" in str(w) and "$.server.route_policy" in str(w) for w in report.warnings)
    assert not report.problems
    both = auth + "    route_policy:\n    - routes: [/v1/models]\n" + old
    problems = [str(p) for p in read_config(write_config(server=both)).report.problems]
    assert any("route rules are set twice" in p for p in problems), problems


async def test_route_policy_of_auth_decides(make_client: Any) -> None:
    rules = ('    route_policy:\n    - routes: ["/v1/models"]\n      allow: {roles: [admin]}\n'
             '    - routes: ["/v1/chat/"]\n')
    async with await make_client(rules) as c:
        assert (await c.get("/v1/models", headers=as_("tok-carol"))).status == 200
        assert (await c.get("/v1/models", headers=as_("tok-alice"))).status == 403
        assert (await c.get("/v1/providers", headers=as_("tok-carol"))).status == 403
        assert (await c.get("/v1/health")).status == 200
