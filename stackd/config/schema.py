"""The run configuration, as attrs classes (API.md §1).

Value checks are declared on the types (``Annotated`` markers of :mod:`stackd.convert`) so
that their messages land on the field's path; cross-field checks (a model naming an unknown
provider...) live in :mod:`stackd.config.loader`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import attrs

from stackd.apis.models import ResourceId
from stackd.config.auth import AuthConfig, RoutePolicyRule
from stackd.config.stores import InferenceStoreConfig, StoreConfig
from stackd.convert import Check, Seconds

__all__ = [
    "AuthConfig",
    "Host",
    "ModelInput",
    "Name",
    "Port",
    "PositiveInt",
    "ProviderEntry",
    "QuotaConfig",
    "RoutePolicyRule",
    "RunConfig",
    "ServerConfig",
    "ShieldInput",
    "IGNORED_TOP_LEVEL_KEYS",
    "AllowedHost",
    "JsonDepth",
    "MetricsConfig",
    "MAX_WORKERS",
    "WorkerCount",
    "ResourceCount",
]

Port = Annotated[int, Check(lambda p: 0 <= p <= 65535, "a port number between 1 and 65535 (0 picks a free one)")]
# orjson writes at most 255 levels, and a stored record comes back wrapped in a few more.
JsonDepth = Annotated[int, Check(lambda n: 2 <= n <= 200, "an integer from 2 to 200")]
ResourceCount = Annotated[int, Check(lambda n: n >= 1, "an integer of at least 1")]
# A Host name as a request carries it, without scheme or path; the port is ignored when matched.
AllowedHost = Annotated[str, Check(
    lambda h: h == "*" or re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+|[A-Za-z0-9._-]+)(:\d+)?", h)
    is not None,
    "a host name or address without scheme or path (localhost, 10.0.0.5, [::1], api.example.com), or '*' for any",
)]
def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True


ProxyNetwork = Annotated[str, Check(_is_network, "an IP address or CIDR network (10.0.0.1, 10.0.0.0/8, ::1)")]
PositiveInt = Annotated[int, Check(lambda n: n > 0, "a positive whole number")]
MAX_WORKERS = 64
# More processes than that is more memory than cores on any machine stackd is sized for.
WorkerCount = Annotated[int, Check(lambda n: 1 <= n <= MAX_WORKERS, f"a number of processes from 1 to {MAX_WORKERS}")]
QuotaLimit = Annotated[int, Check(lambda n: n >= 0, "a whole number of 0 or more")]

# An empty host binds every interface, which nobody writes on purpose: 0.0.0.0 and :: say it.
Host = Annotated[str, Check(lambda h: h.strip() != "" and h == h.strip(), "a host name or address",
                            hint=" (0.0.0.0 or :: listens on every interface, 127.0.0.1 on this machine only)")]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# The name becomes a directory under STACKD_HOME: a path (/tmp/x, ../x) would put state elsewhere.
Name = Annotated[str, Check(lambda n: _NAME.fullmatch(n) is not None, "a name of up to 128 letters, digits, "
                            "'.', '_' or '-', starting with a letter or digit",
                            hint=" (it names a folder under STACKD_HOME; to keep state elsewhere set STACKD_HOME "
                            "or the stores' db_path)")]


# Llama Stack 0.2.x run.yaml keys for APIs stackd does not serve: accepted with a warning.
IGNORED_TOP_LEVEL_KEYS = (
    "vector_dbs",
    "datasets",
    "scoring_fns",
    "benchmarks",
    "tool_groups",
    "logging",
    "external_providers_dir",
    "distribution_spec",
    "container_image",
    "telemetry",
    "storage",
)


@attrs.frozen
class ProviderEntry:
    provider_type: str
    provider_id: str | None = None
    config: dict[str, Any] = attrs.field(factory=dict)
    module: str | None = None  # Llama Stack external-provider field; stackd finds plugins by entry point


@attrs.frozen
class ModelInput:
    model_id: ResourceId | None
    provider_id: ResourceId | None = None
    provider_model_id: ResourceId | None = None
    model_type: Literal["llm", "embedding"] = "llm"
    metadata: dict[str, Any] = attrs.field(factory=dict)
    access_attributes: dict[str, list[str]] | None = None
    input_shields: list[ResourceId] = attrs.field(factory=list)
    output_shields: list[ResourceId] = attrs.field(factory=list)


@attrs.frozen
class ShieldInput:
    shield_id: ResourceId | None
    provider_id: ResourceId | None = None
    provider_shield_id: ResourceId | None = None
    params: dict[str, Any] = attrs.field(factory=dict)
    access_attributes: dict[str, list[str]] | None = None
    on_failure: Literal["closed", "open"] = "closed"


@attrs.frozen
class QuotaConfig:
    kvstore: StoreConfig
    # Requests per window; 0 refuses every request of that kind.
    anonymous_max_requests: QuotaLimit = 100
    # None: 1000 (stackd.quota.limiter); set without server.auth it is a startup warning.
    authenticated_max_requests: QuotaLimit | None = None
    period: Literal["day", "hour", "minute"] = "day"


# Where /metrics is served: an absolute path outside the API's /v1/ (a route there would shadow one).
MetricsPath = Annotated[str, Check(
    lambda p: re.fullmatch(r"/[A-Za-z0-9._~/-]{0,127}", p) is not None and not p.startswith("/v1/") and p != "/v1",
    "an absolute URL path outside /v1/ of up to 128 letters, digits, '.', '_', '~', '-' or '/' (e.g. /metrics)",
)]


@attrs.frozen
class MetricsConfig:
    """``server.metrics``: Prometheus text at ``path``. ``protected`` (the default) passes the
    admission gate like every API route (a token when ``server.auth`` is set, quota, route
    policy); ``public`` is served to anyone who can reach the port, like /v1/health."""

    enabled: bool = True
    path: MetricsPath = "/metrics"
    access: Literal["protected", "public"] = "protected"


@attrs.frozen
class ServerConfig:
    host: Host = "127.0.0.1"
    port: Port = 8321
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    tls_cafile: Path | None = None
    auth: AuthConfig | None = None
    quota: QuotaConfig | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_json_depth: JsonDepth = 64
    max_models: ResourceCount = 1000
    max_shields: ResourceCount = 1000
    # /v1/moderations without `model` uses this shield (a shield id, or the model a shield uses).
    default_moderation_shield: ResourceId | None = None
    # Inputs of one moderation request: each is one shield call.
    max_moderation_inputs: PositiveInt = 32
    # Output shields of a streamed answer check it every this many characters, holding that much back.
    guardrail_window_chars: PositiveInt = 200
    allowed_hosts: list[AllowedHost] | None = None
    # X-Forwarded-For / Forwarded name the client only when the peer is one of these.
    trusted_proxies: list[ProxyNetwork] = attrs.field(factory=list)
    body_timeout: Seconds = Seconds(60.0)  # noqa: RUF009 - NewType: no call at run time
    header_timeout: Seconds = Seconds(10.0)  # noqa: RUF009
    keepalive_timeout: Seconds = Seconds(75.0)  # noqa: RUF009
    max_header_bytes: PositiveInt = 8190
    max_connections: PositiveInt | None = None  # None: half the process's open-file limit
    shutdown_grace: Seconds = Seconds(10.0)  # noqa: RUF009
    # Processes serving the port (docs/deployment.md); `stackd serve --workers N` overrides it.
    workers: WorkerCount = 1
    stream_stall_timeout: Seconds = Seconds(60.0)  # noqa: RUF009 - NewType: no call at run time
    # What an upstream may send: bigger answers or stream lines are 502, not memory.
    max_upstream_body_bytes: int = 64 * 1024 * 1024
    max_upstream_line_bytes: int = 1024 * 1024
    # A streamed chat completion is kept for the inference store up to this size, then not stored.
    max_stored_completion_bytes: int = 4 * 1024 * 1024
    # Completions waiting for the database (an outage) are dropped oldest first past this.
    max_store_queue_bytes: int = 256 * 1024 * 1024
    route_policy: list[RoutePolicyRule] = attrs.field(factory=list)
    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    # One line per request on the log (logger stackd.access); `stackd serve --no-access-log` wins.
    access_log: bool = True


@attrs.frozen
class RunConfig:
    version: int | str = 2
    image_name: Name | None = None
    conda_env: Name | None = None
    apis: list[str] = attrs.field(factory=list)
    providers: dict[str, list[ProviderEntry]] = attrs.field(factory=dict)
    metadata_store: StoreConfig | None = None
    inference_store: InferenceStoreConfig | None = None
    models: list[ModelInput] = attrs.field(factory=list)
    shields: list[ShieldInput] = attrs.field(factory=list)
    server: ServerConfig = attrs.field(factory=ServerConfig)

    @property
    def name(self) -> str:
        return self.image_name or self.conda_env or "stackd"
