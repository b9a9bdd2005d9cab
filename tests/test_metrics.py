"""GET /metrics against live servers: values move as requests, streams, refusals and upstream
failures happen, labels stay bounded, access follows server.metrics (docs/operations.md).

Metric values are per process and the test process serves many apps, so every check compares
a scrape before with one after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from stackd.loading import LoadedConfig
from stackd.testing.fake_openai import FakeOpenAI, Fault
from stackd.testing.local_server import local_server

Client = TestClient[web.Request, web.Application]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def scrape(c: Client, headers: dict[str, str] | None = None) -> Samples:
    resp = await c.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await resp.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(models=("fake-model",), chunks=4) as server:
        yield server


@pytest.fixture
async def vllm_client(
    fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig], serve_app: Any,
) -> AsyncIterator[Client]:
    async with TestClient(await serve_app(vllm_config(fake.url, timeout=1.0))) as c:
        yield c


async def test_a_chat_completion_is_counted_with_tokens_and_upstream_time(vllm_client: Client) -> None:
    c = vllm_client
    before = await scrape(c)
    resp = await c.post("/v1/chat/completions", json=CHAT)
    body = await resp.json()
    assert resp.status == 200
    after = await scrape(c)
    route = dict(route="/v1/chat/completions", method="POST")
    assert delta(before, after, "stackd_http_requests_total", **route, status="200") == 1
    assert delta(before, after, "stackd_http_request_duration_seconds_count", **route) == 1
    assert delta(before, after, "stackd_http_request_duration_seconds_bucket", **route, le="+Inf") == 1
    usage = body["usage"]
    assert delta(before, after, "stackd_tokens_total", model="chat", direction="in") == usage["prompt_tokens"]
    assert delta(before, after, "stackd_tokens_total", model="chat", direction="out") == usage["completion_tokens"]
    assert delta(before, after, "stackd_upstream_request_duration_seconds_count", provider="vllm") == 1
    # Not a stream: no time to first token.
    assert delta(before, after, "stackd_time_to_first_token_seconds_count", model="chat") == 0
    assert value(after, "stackd_http_requests_in_flight") == 1  # the scrape itself


async def test_a_stream_has_ttft_tokens_from_its_usage_and_is_in_flight_while_it_runs(
    vllm_client: Client, fake: FakeOpenAI,
) -> None:
    c = vllm_client
    before = await scrape(c)
    fake.chunk_delay = 0.3
    resp = await c.post("/v1/chat/completions",
                        json=CHAT | {"stream": True, "stream_options": {"include_usage": True}})
    assert resp.status == 200
    await resp.content.readline()  # the first event is out
    during = await scrape(c)
    assert value(during, "stackd_http_streams_in_flight") == 1
    assert value(during, "stackd_http_requests_in_flight") == 2  # the stream and the scrape
    text = (await resp.read()).decode()
    fake.chunk_delay = 0.0
    assert '"usage"' in text and text.rstrip().endswith("data: [DONE]")
    after = await scrape(c)
    assert value(after, "stackd_http_streams_in_flight") == 0
    assert value(after, "stackd_http_requests_in_flight") == 1
    assert delta(before, after, "stackd_time_to_first_token_seconds_count", model="chat") == 1
    assert delta(before, after, "stackd_tokens_total", model="chat", direction="out") == 4
    assert delta(before, after, "stackd_tokens_total", model="chat", direction="in") > 0
    assert delta(before, after, "stackd_http_requests_total",
                 route="/v1/chat/completions", method="POST", status="200") == 1


async def test_a_stream_the_client_leaves_is_no_longer_in_flight(vllm_client: Client, fake: FakeOpenAI) -> None:
    c = vllm_client
    fake.chunk_delay = 0.5
    resp = await c.post("/v1/chat/completions", json=CHAT | {"stream": True})
    await resp.content.readline()
    resp.close()
    for _ in range(200):  # the server notices the hang-up when it next writes
        if value(await scrape(c), "stackd_http_streams_in_flight") == 0:
            break
        await asyncio.sleep(0.05)
    assert value(await scrape(c), "stackd_http_streams_in_flight") == 0
    assert value(await scrape(c), "stackd_http_requests_in_flight") == 1


@pytest.mark.parametrize(("fault", "kind", "status"), [
    (Fault(status=500), "5xx", 502),
    (Fault(status=503), "5xx", 503),
    (Fault(status=400), "4xx", 400),
    (Fault(non_json=True), "bad_answer", 502),
    (Fault(cut_after=1), "bad_answer", 502),
    (Fault(delay=3.0), "timeout", 504),
], ids=["500", "503", "400", "not-json", "closed", "timeout"])
async def test_upstream_failures_are_counted_by_kind(
    vllm_client: Client, fake: FakeOpenAI, fault: Fault, kind: str, status: int,
) -> None:
    c = vllm_client
    before = await scrape(c)
    fake.fault = fault
    resp = await c.post("/v1/chat/completions", json=CHAT)
    await resp.read()
    fake.fault = None
    assert resp.status == status
    after = await scrape(c)
    assert delta(before, after, "stackd_upstream_errors_total", provider="vllm", kind=kind) == 1
    others = [k for k in ("refused", "timeout", "4xx", "5xx", "bad_answer") if k != kind]
    assert all(delta(before, after, "stackd_upstream_errors_total", provider="vllm", kind=k) == 0 for k in others)
    assert delta(before, after, "stackd_http_requests_total",
                 route="/v1/chat/completions", method="POST", status=str(status)) == 1


async def test_an_upstream_that_refuses_connections_is_counted_as_refused(
    fake: FakeOpenAI, vllm_config: Callable[..., LoadedConfig], serve_app: Any,
) -> None:
    async with TestClient(await serve_app(vllm_config(fake.url, timeout=1.0))) as c:
        await fake.stop()  # the port now refuses connections
        before = await scrape(c)
        resp = await c.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 503
        after = await scrape(c)
        assert delta(before, after, "stackd_upstream_errors_total", provider="vllm", kind="refused") == 1


async def test_a_stream_cut_mid_way_is_a_bad_answer(vllm_client: Client, fake: FakeOpenAI) -> None:
    c = vllm_client
    before = await scrape(c)
    fake.fault = Fault(cut_after=2)
    resp = await c.post("/v1/chat/completions", json=CHAT | {"stream": True})
    text = await resp.text()
    fake.fault = None
    assert resp.status == 200 and '"error"' in text
    after = await scrape(c)
    assert delta(before, after, "stackd_upstream_errors_total", provider="vllm", kind="bad_answer") == 1


async def test_labels_stay_bounded_under_a_flood_of_unknown_models_and_paths(vllm_client: Client) -> None:
    c = vllm_client
    before = await scrape(c)
    for i in range(150):
        resp = await c.post("/v1/chat/completions", json={**CHAT, "model": f"no-such-model-{i}"})
        assert resp.status == 404
        resp = await c.get(f"/v1/no-such-route-{i}")
        assert resp.status == 404
        resp = await c.get(f"/v1/models/unknown-{i}")
        assert resp.status == 404
    text = await (await c.get("/metrics")).text()
    assert "no-such-model" not in text and "no-such-route" not in text and "unknown-" not in text
    after = await scrape(c)
    new_series = set(after) - set(before)
    # At most: the three (route, method, 404) counters and their histograms, whatever the flood.
    assert len({k for k in new_series if k[0] == "stackd_http_requests_total"}) <= 3
    assert delta(before, after, "stackd_http_requests_total", route="unmatched", method="GET", status="404") == 150
    assert delta(before, after, "stackd_http_requests_total",
                 route="/v1/models/{model_id}", method="GET", status="404") == 150


async def test_odd_methods_are_counted_as_other(vllm_client: Client) -> None:
    c = vllm_client
    before = await scrape(c)
    resp = await c.request("TRACE", "/v1/models")  # the parser refuses methods it does not know
    assert resp.status == 405
    after = await scrape(c)
    # A 405 matched no route of its method: aiohttp gives no template for it.
    assert delta(before, after, "stackd_http_requests_total", route="unmatched", method="other", status="405") == 1


async def _auth_server(serve_app: Any, write_config: Callable[..., Path], base: str, metrics: str = "",
                       quota: str = "") -> Any:
    server = f"  auth:\n    provider_type: custom\n    config:\n      endpoint: {base}/auth\n" + metrics + quota
    return await serve_app(write_config(server=server))


@pytest.fixture
async def idp() -> AsyncIterator[str]:
    """A custom auth endpoint: "good-token" is alice, anything else is refused."""
    async def decide(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body["api_key"] != "good-token":
            return web.json_response({"message": "no"}, status=401)
        return web.json_response({"principal": "alice", "attributes": {"roles": ["user"]}})

    app = web.Application()
    app.router.add_post("/auth", decide)
    async with local_server(app) as base:
        yield base


GOOD = {"Authorization": "Bearer good-token"}


async def test_auth_failures_by_reason_cache_hits_and_quota_decisions(
    serve_app: Any, write_config: Callable[..., Path], idp: str, tmp_path: Path,
) -> None:
    quota = (f"  quota:\n    kvstore: {{type: sqlite, db_path: {tmp_path / 'q.db'}}}\n"
             "    authenticated_max_requests: 2\n")
    metrics = "  metrics: {access: public}\n"
    async with TestClient(await _auth_server(serve_app, write_config, idp, metrics=metrics, quota=quota)) as c:
        before = await scrape(c)
        assert (await c.get("/v1/models")).status == 401
        assert (await c.get("/v1/models", headers={"Authorization": "Basic eDp5"})).status == 401
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer bad-token"})).status == 401
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer"})).status == 401  # no token
        assert [(await c.get("/v1/models", headers=GOOD)).status for _ in range(3)] == [200, 200, 429]
        after = await scrape(c)
        assert delta(before, after, "stackd_auth_failures_total", reason="missing") == 1
        assert delta(before, after, "stackd_auth_failures_total", reason="malformed") == 2
        assert delta(before, after, "stackd_auth_failures_total", reason="invalid") == 1
        assert delta(before, after, "stackd_quota_decisions_total", decision="admitted") == 2
        assert delta(before, after, "stackd_quota_decisions_total", decision="rejected") == 1
        # The good token was decided once by the endpoint, then from the cache.
        assert delta(before, after, "stackd_auth_fetches_total", source="custom", outcome="ok") == 2  # good, bad
        assert delta(before, after, "stackd_auth_cache_lookups_total", cache="custom", result="hit") == 2
        assert delta(before, after, "stackd_auth_cache_lookups_total", cache="custom", result="miss") == 2
        assert delta(before, after, "stackd_http_requests_total", route="/v1/models", method="GET", status="401") == 4
        assert delta(before, after, "stackd_http_requests_total", route="/v1/models", method="GET", status="429") == 1
        assert "alice" not in await (await c.get("/metrics")).text()


async def test_protected_metrics_pass_the_gate(serve_app: Any, write_config: Callable[..., Path], idp: str) -> None:
    async with TestClient(await _auth_server(serve_app, write_config, idp)) as c:
        resp = await c.get("/metrics")
        assert resp.status == 401 and "stackd_" not in await resp.text()
        assert (await c.get("/metrics", headers={"Authorization": "Bearer bad-token"})).status == 401
        samples = await scrape(c, GOOD)
        assert value(samples, "stackd_http_requests_total", route="/metrics", method="GET", status="401") >= 2


async def test_public_metrics_need_no_token_and_count_no_quota(
    serve_app: Any, write_config: Callable[..., Path], idp: str, tmp_path: Path,
) -> None:
    quota = f"  quota:\n    kvstore: {{type: sqlite, db_path: {tmp_path / 'q.db'}}}\n    anonymous_max_requests: 1\n"
    metrics = "  metrics: {path: /internal/metrics, access: public}\n"
    async with TestClient(await _auth_server(serve_app, write_config, idp, metrics=metrics, quota=quota)) as c:
        for _ in range(3):
            resp = await c.get("/internal/metrics")
            assert resp.status == 200 and "X-RateLimit-Limit" not in resp.headers
            assert "stackd_http_requests_total" in await resp.text()
        assert (await c.get("/metrics")).status == 401  # no route there: the gate answers first


async def test_metrics_can_be_disabled(serve_app: Any, write_config: Callable[..., Path]) -> None:
    async with TestClient(await serve_app(write_config(server="  metrics: {enabled: false}\n"))) as c:
        assert (await c.get("/metrics")).status == 404


@pytest.mark.parametrize(("setting", "message"), [
    ("{path: /v1/metrics}", "an absolute URL path outside /v1/"),
    ("{path: metrics}", "an absolute URL path outside /v1/"),
    ("{access: open}", "expected one of 'protected', 'public', got 'open'"),
])
def test_metrics_settings_are_checked(
    run_cli: Any, write_config: Callable[..., Path], setting: str, message: str,
) -> None:
    path = write_config(server=f"  metrics: {setting}\n")
    result = run_cli("validate", str(path))
    assert result.returncode != 0
    assert "@ $.server.metrics." in result.stderr and message in result.stderr, result.stderr


async def test_metrics_of_two_processes_are_summed_in_multiprocess_mode(
    tmp_path: Path, stackd_serve: Any, port: Callable[[], int], yaml_for: Callable[..., str],
) -> None:
    """PROMETHEUS_MULTIPROC_DIR shared by two `stackd serve` processes (what server.workers sets up):
    either one's /metrics counts the requests both served."""
    shared = tmp_path / "prom"
    shared.mkdir()
    urls, procs = [], []
    for i in range(2):
        state = tmp_path / f"s{i}"
        state.mkdir()
        text = yaml_for(server="  metrics: {access: public}\n")
        text = text.replace(str(tmp_path / "registry.db"), str(state / "r.db"))
        text = text.replace(str(tmp_path / "inference_store.db"), str(state / "i.db"))
        cfg = state / "run.yaml"
        cfg.write_text(text, encoding="utf-8")
        p = port()
        procs.append(stackd_serve(str(cfg), "--port", str(p), env={"PROMETHEUS_MULTIPROC_DIR": str(shared)}))
        urls.append(f"http://127.0.0.1:{p}")
    for proc in procs:
        await asyncio.to_thread(proc.wait_serving)
    async with aiohttp.ClientSession() as s:
        for i in range(10):
            async with s.get(urls[i % 2] + "/v1/models") as r:
                assert r.status == 200
        for url in urls:
            async with s.get(url + "/metrics") as r:
                samples = parse(await r.text())
            assert value(samples, "stackd_http_requests_total", route="/v1/models", method="GET", status="200") == 10
    assert any(f.name.endswith(".db") for f in shared.iterdir())  # one file per process and kind


def test_model_and_shield_labels_are_capped_over_a_long_life(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered ids come and go: past the cap a new id counts as `other`, and ids seen before keep their series."""
    from stackd import metrics

    for cap in (metrics.MAX_MODEL_LABELS, metrics.MAX_SHIELD_LABELS):
        label = metrics._Labels(cap)
        assert [label(f"id-{i}") for i in range(cap)] == [f"id-{i}" for i in range(cap)]
        assert label("one-more") == metrics.OTHER
        assert label("id-0") == "id-0" and label(None) == metrics.OTHER
    # Shield verdicts go through the cap (a small one here: the process's own is shared with other tests).
    monkeypatch.setattr(metrics, "_shield_label", metrics._Labels(2))
    before = value(parse(metrics.render().decode()), "stackd_shield_verdicts_total", shield="other", verdict="pass")
    for i in range(5):
        metrics.shield_verdict(f"label-test-shield-{i}", "pass")
    samples = parse(metrics.render().decode())
    assert value(samples, "stackd_shield_verdicts_total", shield="label-test-shield-1", verdict="pass") == 1
    assert value(samples, "stackd_shield_verdicts_total", shield="label-test-shield-2", verdict="pass") == 0
    assert value(samples, "stackd_shield_verdicts_total", shield="other", verdict="pass") == before + 3


@given(st.lists(st.sampled_from([0.0, 0.005, 0.0051, 0.01, 1.0, 119.9, 120.0, 121.0, 1e9]) | st.floats(0, 200),
                max_size=30))
def test_the_plain_histogram_counts_what_prometheus_client_counts(values: list[float]) -> None:
    """stackd's one-process histogram (plain numbers) exposes the buckets, count and sum that
    prometheus-client's own Histogram does for the same observations."""
    from prometheus_client import CollectorRegistry, Histogram

    from stackd import metrics

    family = metrics._Family.__new__(metrics._Family)  # not registered in stackd's registry
    family.name, family.doc, family.labelnames = "h", "doc", ("route",)
    family.bounds, family.children = (*metrics._SECONDS, float("inf")), {}
    theirs = Histogram("h", "doc", ("route",), buckets=metrics._SECONDS, registry=CollectorRegistry())
    for v in values:
        family.labels("/r").observe(v)
        theirs.labels("/r").observe(v)
    ours = {(s.name, frozenset(s.labels.items())): s.value for f in family.collect() for s in f.samples}
    assert ours == pytest.approx(_histogram_samples(theirs))


def _histogram_samples(histogram: Any) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in histogram.collect() for s in f.samples if not s.name.endswith("_created")}
