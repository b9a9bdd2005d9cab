"""The APIs stackd knows: one list, read by the config checks, the server and the provider checks.

``PROVIDER_APIS`` are the Llama Stack 0.2.x APIs that providers serve. stackd serves those for
which it has a provider protocol (and an installed plugin); the others are known so that a
Llama Stack config naming them gets a clear answer (a warning, or 501 on their routes) instead of
"unknown API". ``RESOURCE_APIS`` come with the server itself.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from stackd.apis.inference import InferenceProvider
from stackd.apis.safety import SafetyProvider

__all__ = ["PROVIDER_APIS", "RESOURCE_APIS", "Api", "COMMON_METHODS"]


@attrs.frozen
class Api:
    name: str
    prefixes: tuple[str, ...]
    """Route prefixes of the API: answered with 501 when the API is listed but not installed."""
    protocol: type | None = None
    """What a provider of this API implements; ``None`` while stackd has no provider contract for it."""
    optional: tuple[str, ...] = ()
    """Methods a provider of this API may define (async), beside :data:`COMMON_METHODS`."""


_APIS = (
    Api("inference", ("/v1/inference/", "/v1/chat/", "/v1/completions", "/v1/embeddings",
                      "/v1/openai/v1/chat/", "/v1/openai/v1/completions", "/v1/openai/v1/embeddings"),
        InferenceProvider, ("list_models",)),
    Api("safety", ("/v1/safety/", "/v1/moderations", "/v1/openai/v1/moderations"), SafetyProvider,
        ("register_shield",)),
    Api("agents", ("/v1/agents", "/v1/responses", "/v1/openai/v1/responses")),
    Api("vector_io", ("/v1/vector-io/", "/v1/vector_stores", "/v1/openai/v1/vector_stores", "/v1/vector-dbs")),
    Api("telemetry", ("/v1/telemetry/",)),
    Api("datasetio", ("/v1/datasetio/",)),
    Api("scoring", ("/v1/scoring/",)),
    Api("eval", ("/v1/eval/",)),
    Api("post_training", ("/v1/post-training/",)),
    Api("tool_runtime", ("/v1/tool-runtime/",)),
    Api("files", ("/v1/files", "/v1/openai/v1/files")),
)

PROVIDER_APIS: Mapping[str, Api] = {api.name: api for api in _APIS}

RESOURCE_APIS = (
    "models",
    "shields",
    "providers",
    "inspect",
    "vector_dbs",
    "datasets",
    "scoring_functions",
    "benchmarks",
    "tool_groups",
)

COMMON_METHODS: Mapping[str, bool] = {
    "close": True, "health": True, "is_ready": False, "not_ready_reason": False,
}
"""Methods any provider may define, and whether they must be ``async``: ``close()`` on shutdown,
``health()`` for ``/v1/providers``, ``is_ready()`` (sync) while it loads, ``not_ready_reason()``
(sync) when it cannot become ready."""
