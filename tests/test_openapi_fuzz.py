"""schemathesis against a live ``stackd serve``: every route of /v1/openapi.json, requests drawn
from the document itself, on the fake OpenAI upstream (remote::vllm, inline::llama-guard) and the
echo plugin. No answer may be a 5xx, and every answer must match the document (status, content
type, headers, body).

The default run draws a few requests per route (tens of seconds on 2 busy cores). A longer run
by hand (docs/operations.md, "OpenAPI")::

    STACKD_FUZZ_EXAMPLES=300 python -m pytest -p no:cacheprovider tests/test_openapi_fuzz.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stackd.loading import load_config
from stackd.server import create_app
from stackd.server.openapi import build_document
from stackd.testing.fake_openai import FakeOpenAI, llama_guard

__all__: list[str] = []

pytest.importorskip("stackd_provider_vllm", reason="the remote::vllm plugin is installed by tox and .ci/run")
pytest.importorskip("stackd_provider_llama_guard", reason="the inline::llama-guard plugin is installed by tox")

EXAMPLES = int(os.environ.get("STACKD_FUZZ_EXAMPLES", "6"))
STACKD = str(Path(sys.executable).with_name("stackd"))
GUARD = "Llama-Guard-3-1B"


class _FakeInThread:
    """The fake upstream on its own event loop in a thread, for as long as the module's server runs."""

    def __init__(self) -> None:
        self.fake = FakeOpenAI(models=("fake-model", GUARD), chunks=4, reply=llama_guard({"kill": "S1"}))
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            async with self.fake:
                self._ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())
        self._loop.close()

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        assert self._ready.wait(30), "the fake upstream did not start"
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _config(state: Path, upstream: str) -> str:
    return f"""\
apis: [inference, safety]
providers:
  inference:
  - provider_id: vllm
    provider_type: remote::vllm
    config: {{url: "{upstream}/v1", timeout: 10}}
  - provider_id: echo
    provider_type: inline::echo
    config: {{models: [echo-1, echo-embed]}}
  safety:
  - provider_id: llama-guard
    provider_type: inline::llama-guard
metadata_store: {{type: sqlite, db_path: {state}/registry.db}}
inference_store: {{type: sqlite, db_path: {state}/store.db}}
models:
- model_id: chat
  provider_id: vllm
  provider_model_id: fake-model
- model_id: {GUARD}
  provider_id: vllm
- model_id: echo-1
  provider_id: echo
- model_id: echo-embed
  provider_id: echo
  model_type: embedding
  metadata: {{embedding_dimension: 8}}
shields:
- shield_id: {GUARD}
server:
  port: 0
  default_moderation_shield: {GUARD}
  max_body_bytes: 65536
"""


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    state = tmp_path_factory.mktemp("fuzz")
    with _FakeInThread() as fake:
        (state / "run.yaml").write_text(_config(state, fake.url))
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACKD_")}
        env.update(STACKD_HOME=str(state / "home"), PYTHONUNBUFFERED="1")
        log = (state / "serve.log").open("w+")
        proc = subprocess.Popen([STACKD, "serve", str(state / "run.yaml")], cwd=state, env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            url = _wait_serving(proc, state / "serve.log")
            yield schemathesis.openapi.from_url(url + "/v1/openapi.json")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                log.close()
            output = (state / "serve.log").read_text()
            assert "Traceback" not in output, output[-5000:]


def _wait_serving(proc: subprocess.Popen[str], log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if " serving " in line and " on " in line:
                return line.rsplit(" on ", 1)[1].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"stackd did not start:\n{log.read_text()}")


def _labels() -> list[str]:
    """Every operation of the document this config gives (built without starting the server); the
    test then fails for a route the live document lacks."""
    state = Path(tempfile.mkdtemp())
    try:
        (state / "run.yaml").write_text(_config(state, "http://127.0.0.1:9"))
        document = build_document(create_app(load_config(state / "run.yaml", env={})))
    finally:
        shutil.rmtree(state)
    return [f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops]


def _real_ids(case: Any, label: str) -> None:
    """Point about two requests in three at a real model or shield of the kind the route takes
    (picked from the body, so a failure replays the same): a drawn id only ever meets 404."""
    body = case.body
    if not isinstance(body, dict):
        return
    pick = zlib.crc32(repr(sorted(body.items(), key=str)).encode())
    if pick % 3 == 0:
        return
    models = ("echo-embed",) if "embeddings" in label else ("chat", "echo-1")
    if "moderations" in label:
        models = (GUARD,)
    for key in ("model", "model_id"):
        if isinstance(body.get(key), str):
            body[key] = models[pick % len(models)]
    if isinstance(body.get("shield_id"), str):
        body["shield_id"] = GUARD


@pytest.mark.parametrize("label", _labels())
def test_every_answer_is_in_the_document_and_none_is_a_server_error(live_schema: Any, label: str) -> None:
    operation = live_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is missing from the live document"

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        _real_ids(case, label)
        response = case.call_and_validate(checks=CHECKS, timeout=30)
        _events_match(live_schema.raw_schema, operation, response)

    fuzz()


def _events_match(document: dict[str, Any], operation: Any, response: Any) -> None:
    """Each SSE event's JSON matches the contentSchema of the document (schemathesis checks the
    events' framing; the JSON inside is an annotation it does not look into)."""
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return
    media = document["paths"][operation.path][operation.method.lower()]["responses"]["200"]["content"]
    event_schema = media["text/event-stream"]["schema"]["properties"]["data"]["contentSchema"]
    validator = jsonschema.Draft202012Validator({**event_schema, "components": document["components"]})
    frames = [f for f in response.content.split(b"\n\n") if f.strip()]
    assert frames, "an empty stream"
    for frame in frames:
        assert frame.startswith(b"data: "), frame[:200]
        data = frame.removeprefix(b"data: ")
        if data == b"[DONE]":
            assert frame is frames[-1], "[DONE] before the end"
            continue
        errors = [e.message for e in validator.iter_errors(orjson.loads(data))]
        assert not errors, (data[:500], errors[:3])


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
