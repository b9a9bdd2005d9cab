"""Prometheus metrics (docs/operations.md lists them): defined once, per process.

prometheus-client keeps metric values per process, in the metric objects; these live in this
module, registered in stackd's own registry (not the client library's global default, so an
application that embeds stackd keeps its own). Several apps in one process (tests) add up.

Every label takes a bounded set of values: route templates (not paths), the HTTP methods
aiohttp routes (others are ``other``), status codes, provider and shield ids from the config
or the registry (bounded by ``server.max_models`` / ``max_shields``), model ids only once the
registry resolved them (and at most :data:`MAX_MODEL_LABELS` of them; then ``other``), error
kinds and reasons from fixed lists. Never a principal, a token, a path or a client's string.

Several processes (``server.workers``): prometheus-client's multiprocess mode. When
``PROMETHEUS_MULTIPROC_DIR`` is set before stackd starts, every process writes its values to
files there and ``/metrics``, whichever process answers it, reads and sums them all (gauges
of in-flight work are summed over live processes). The parent that starts the workers must
set the variable to an empty directory before it starts them, and call
:func:`worker_exited` with a worker's pid when that worker exits.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

__all__ = [
    "CONTENT_TYPE",
    "MAX_MODEL_LABELS",
    "MAX_SHIELD_LABELS",
    "OTHER",
    "REGISTRY",
    "auth_cache",
    "auth_failure",
    "auth_fetch",
    "model_label",
    "multiprocess",
    "quota_decision",
    "render",
    "shield_verdict",
    "upstream_error",
    "worker_exited",
    "worker_restart",
]

# The text format generate_latest writes; every Prometheus (and most scrapers) reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
MAX_MODEL_LABELS = 500
MAX_SHIELD_LABELS = 100

REGISTRY = CollectorRegistry(auto_describe=True)


def multiprocess() -> bool:
    """Whether values are shared through ``PROMETHEUS_MULTIPROC_DIR`` (read when this module loads)."""
    return _MULTIPROC


_MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# Latency: 5 ms (a cached answer) to 2 min (a long generation).
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TTFT = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class _CounterValue:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class _HistogramValue:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.sum += amount
        # The first bucket whose upper bound is at least ``amount`` (Prometheus' ``le``).
        self.counts[bisect_left(self.bounds, amount)] += 1


class _Family:
    """A labelled counter or histogram of one process, kept as plain numbers and exposed by
    :meth:`collect` when scraped: prometheus-client's own objects take a lock and walk their
    buckets in Python on every update (about 1 µs for a count, 2 µs for a latency), and every
    request makes several. Updates come from the event loop's thread only."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...] | None) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = labels
        self.bounds = (*buckets, math.inf) if buckets is not None else None
        self.children: dict[tuple[str, ...], Any] = {}
        REGISTRY.register(self)

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = (
                _CounterValue() if self.bounds is None else _HistogramValue(self.bounds))
        return child

    def collect(self) -> Iterator[Metric]:
        if self.bounds is None:
            counter = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
            for values, child in list(self.children.items()):
                counter.add_metric(values, child.value, created=child.created)
            yield counter
            return
        histogram = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        bounds = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        for values, child in list(self.children.items()):
            cumulative = list(itertools.accumulate(child.counts))
            histogram.add_metric(values, list(zip(bounds, cumulative, strict=True)), child.sum)
        yield histogram


def _counter(name: str, doc: str, labels: tuple[str, ...]) -> Any:
    if _MULTIPROC:  # values in files, summed by whichever process is scraped
        return Counter(name, doc, labels, registry=REGISTRY)
    return _Family(name, doc, labels, None)


def _histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Any:
    if _MULTIPROC:
        return Histogram(name, doc, labels, buckets=buckets, registry=REGISTRY)
    return _Family(name, doc, labels, buckets)


def _gauge(name: str, doc: str) -> Gauge:
    # livesum: with several processes, the sum over the live ones (a dead one's streams are gone).
    return Gauge(name, doc, registry=REGISTRY, multiprocess_mode="livesum")


HTTP_REQUESTS = _counter("stackd_http_requests", "HTTP requests answered, by route template, method and status.",
                         ("route", "method", "status"))
HTTP_DURATION = _histogram("stackd_http_request_duration_seconds",
                           "Time from the request's arrival to the end of its answer (a stream's last byte).",
                           ("route", "method"), _SECONDS)
IN_FLIGHT = _gauge("stackd_http_requests_in_flight", "Requests being served now (streams included).")
STREAMS = _gauge("stackd_http_streams_in_flight", "Streamed answers being sent now.")
TTFT = _histogram("stackd_time_to_first_token_seconds",
                  "Time from a streaming request's arrival to its first chunk, by model.", ("model",), _TTFT)
TOKENS = _counter("stackd_tokens", "Tokens by model and direction (in: prompt, out: completion), from the "
                  "usage the upstream reported.", ("model", "direction"))
UPSTREAM_DURATION = _histogram("stackd_upstream_request_duration_seconds",
                               "Time from sending a request to an upstream to the head of its answer, by provider.",
                               ("provider",), _SECONDS)
UPSTREAM_ERRORS = _counter("stackd_upstream_errors", "Failed upstream calls by provider and kind "
                           "(refused, timeout, 4xx, 5xx, bad_answer).", ("provider", "kind"))
QUOTA = _counter("stackd_quota_decisions", "Quota decisions: admitted, rejected (429), unavailable (the quota store "
                 "failed: 503).", ("decision",))
AUTH_FAILURES = _counter("stackd_auth_failures", "Requests refused by authentication, by reason.", ("reason",))
AUTH_CACHE = _counter("stackd_auth_cache_lookups", "Lookups of cached authentication decisions, by cache and result.",
                      ("cache", "result"))
AUTH_FETCHES = _counter("stackd_auth_fetches", "Calls to the identity provider (JWKS, introspection, custom "
                        "endpoint), by source and outcome.", ("source", "outcome"))
SHIELDS = _counter("stackd_shield_verdicts", "Shield runs by shield and verdict (pass, violation, error).",
                   ("shield", "verdict"))
WORKER_RESTARTS = _counter("stackd_provider_worker_restarts", "Restarts of in-process providers' worker processes.",
                           ("provider",))

UPSTREAM_KINDS = ("refused", "timeout", "4xx", "5xx", "bad_answer")
AUTH_REASONS = ("missing", "malformed", "invalid", "unavailable")


def _cached(metric: Any) -> Callable[..., Any]:
    """``metric.labels`` through a dict: prometheus-client's own lookup takes a lock and checks
    its arguments each time (about 1.5 µs); a hit here is one dict lookup."""
    children: dict[tuple[str, ...], Any] = {}

    def child(*values: str) -> Any:
        found = children.get(values)
        if found is None:
            found = children[values] = metric.labels(*values)
        return found

    return child


http_requests = _cached(HTTP_REQUESTS)
http_duration = _cached(HTTP_DURATION)
ttft = _cached(TTFT)
tokens = _cached(TOKENS)
upstream_duration = _cached(UPSTREAM_DURATION)
_upstream_errors = _cached(UPSTREAM_ERRORS)
_auth_cache = _cached(AUTH_CACHE)
_auth_fetches = _cached(AUTH_FETCHES)
_auth_failures = _cached(AUTH_FAILURES)
_quota = _cached(QUOTA)
_shields = _cached(SHIELDS)



class _Labels:
    """At most ``limit`` distinct values of one label, first come; later ones count as ``other``
    (registered ids come and go: a long-running server must not grow a series per id forever)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if value is None:
            return OTHER
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


model_label = _Labels(MAX_MODEL_LABELS)
"""A registered model id as a label, while fewer than :data:`MAX_MODEL_LABELS` were seen."""
_shield_label = _Labels(MAX_SHIELD_LABELS)


def upstream_error(provider_id: str, kind: str) -> None:
    _upstream_errors(provider_id, kind).inc()


def auth_failure(reason: str) -> None:
    _auth_failures(reason if reason in AUTH_REASONS else OTHER).inc()


def auth_cache(cache: str, hit: bool) -> None:
    _auth_cache(cache, "hit" if hit else "miss").inc()


def auth_fetch(source: str, ok: bool) -> None:
    _auth_fetches(source, "ok" if ok else "error").inc()


def quota_decision(decision: str) -> None:
    _quota(decision).inc()


def shield_verdict(shield_id: str, verdict: str) -> None:
    _shields(_shield_label(shield_id), verdict).inc()


def worker_restart(provider_id: str) -> None:
    WORKER_RESTARTS.labels(provider_id).inc()


def render() -> bytes:
    """The Prometheus text exposition of every stackd metric (of every process, in multiprocess mode)."""
    if _MULTIPROC:
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def worker_exited(pid: int) -> None:
    """For the parent of ``server.workers``: drop a dead worker's live gauges."""
    if _MULTIPROC:
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
