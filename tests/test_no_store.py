"""``inference_store: {type: none}``: a pure proxy that records nothing and says so when asked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from stackd.config.stores import NoStoreConfig
from stackd.loading import ConfigError, parse_config


def _yaml(tmp_path: Path, store: str) -> str:
    return f"""\
apis: [inference]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
    config: {{models: [echo-1]}}
metadata_store: {{type: sqlite, db_path: {tmp_path}/registry.db}}
inference_store: {store}
models:
- model_id: echo-1
"""


def test_type_none_is_accepted(tmp_path: Path) -> None:
    loaded = parse_config(_yaml(tmp_path, "{type: none}"), env={})
    assert isinstance(loaded.run.inference_store, NoStoreConfig)


def test_an_unknown_store_type_names_none_among_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_yaml(tmp_path, "{type: nothing}"), env={})
    assert "$.inference_store.type" in str(info.value)
    assert "'none'" in str(info.value)


def test_redis_is_still_refused_with_none_offered(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_yaml(tmp_path, "{type: redis}"), env={})
    assert "cannot hold chat completions; use sqlite or postgres (or none to store nothing)" in str(info.value)


async def test_completions_are_served_and_nothing_is_stored(
    tmp_path: Path, serve_app: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STACKD_HOME", str(tmp_path / "home"))
    server = await serve_app(parse_config(_yaml(tmp_path, "{type: none}"), env={}))

    async with aiohttp.ClientSession(str(server.make_url(""))) as http:
        body = {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post("/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["model"] == "echo-1"
        async with http.post("/v1/chat/completions", json={**body, "stream": True}) as resp:
            assert resp.status == 200
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
        for path in ("/v1/chat/completions", "/v1/chat/completions/chatcmpl-1"):
            async with http.get(path) as resp:
                assert resp.status == 501
                error = (await resp.json())["error"]
                assert "inference_store: {type: none}" in error["message"]
                assert "set type sqlite or postgres" in error["message"]
    # No store file was made, in the state directory or anywhere else.
    assert not await asyncio.to_thread(lambda: list(tmp_path.rglob("inference_store.db")))
