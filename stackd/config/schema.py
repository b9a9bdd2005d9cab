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
    """One provider instance of an API.

    - ``provider_id``: your name for this instance; unique within its API. Empty (e.g.
      ``${env.ENABLE_X:+x}`` with ``ENABLE_X`` unset) or ``__disabled__`` disables the provider with its
      models and shields
    - ``provider_type``: ``remote::NAME`` or ``inline::NAME``; must match an installed plugin
      (``stackd providers`` lists them; ``pip install stackd-provider-NAME`` installs one)
    - ``config``: checked against the plugin's own schema (below), with the same error paths
      (``$.providers.inference[0].config.url``)
    - ``module``: Llama Stack's external-provider field, accepted and unused: stackd finds plugins by entry point
    """

    provider_type: str
    provider_id: str | None = None
    config: dict[str, Any] = attrs.field(factory=dict)
    module: str | None = None  # Llama Stack external-provider field; stackd finds plugins by entry point


@attrs.frozen
class ModelInput:
    """A model registered at start. Models of the file are reconciled at every start: one removed from
    the file is unregistered; those registered through ``POST /v1/models`` persist across restarts. Every
    provider accepts the file's resources before the store is changed, so a start that fails leaves the
    store as it was. Every id (``model_id``, ``provider_model_id``, ``shield_id``, ``provider_shield_id``,
    ``provider_id``) is 1 to 256 characters, without control characters or leading/trailing spaces;
    ``/`` and ``:`` are fine.

    - ``model_id``: the name clients use
    - ``provider_id``: which provider serves it; default: the only inference provider
    - ``provider_model_id``: the provider's name for it; default: ``model_id``
    - ``model_type``: ``llm`` or ``embedding``
    - ``metadata``: ``embedding_dimension`` is required for embedding models
    - ``access_attributes``: who may see it: ``{roles: [...], teams: [...]}``
    - ``input_shields``, ``output_shields``: guardrails of an llm model: shields run on the input and on
      the answer of every chat completion, streamed or not, on both route families; text completions
      refuse a guarded model. A shield the server does not have stops the start (docs/safety.md)
    """

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
    """A shield registered at start, reconciled like models.

    - ``shield_id``: the name clients use
    - ``provider_id``: which safety provider serves it; default: the only safety provider
    - ``provider_shield_id``: the provider's name for it (a guard model, a Bedrock guardrail id);
      default: ``shield_id``
    - ``params``: provider-specific settings (Bedrock: ``guardrailVersion``)
    - ``access_attributes``: who may see it, as for models
    - ``on_failure``: a shield used as a guardrail whose provider fails: ``closed`` answers 503,
      ``open`` lets the text pass with a warning in the log
    """

    shield_id: ResourceId | None
    provider_id: ResourceId | None = None
    provider_shield_id: ResourceId | None = None
    params: dict[str, Any] = attrs.field(factory=dict)
    access_attributes: dict[str, list[str]] | None = None
    on_failure: Literal["closed", "open"] = "closed"


@attrs.frozen
class QuotaConfig:
    """Request quotas, counted after authentication, per fixed UTC window; health and version are not
    counted (docs/quota.md).

    - ``kvstore``: where the counters live: ``{type: sqlite, db_path}`` (WAL, shared by every server
      that names the same file; never the metadata store's file)
    - ``anonymous_max_requests``: requests per window of a caller without a principal, keyed by client
      address (``server.trusted_proxies`` decides it); without ``server.auth`` every caller is
      anonymous. 0 refuses every such request
    - ``authenticated_max_requests``: requests per window of an authenticated caller, keyed by a hash
      of its principal; default 1000; set without ``server.auth`` it is a startup warning (it would
      never apply)
    - ``period``: the window: ``day`` (UTC midnight to midnight), ``hour`` or ``minute``
    """

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
    """``server.metrics``: Prometheus text at ``path`` (docs/operations.md).

    - ``enabled``: serve ``/metrics`` and count; ``false`` removes the route and the counting
    - ``path``: where; an absolute path outside ``/v1/``
    - ``access``: ``protected`` (the default) passes the admission gate like every API route (a token
      when ``server.auth`` is set, quota, route policy); ``public`` is served to anyone who can reach
      the port, like /v1/health
    """

    enabled: bool = True
    path: MetricsPath = "/metrics"
    access: Literal["protected", "public"] = "protected"


@attrs.frozen
class ServerConfig:
    """The HTTP server: where it listens, TLS, auth, quota and the limits of what a client may send.

    - ``host``: address to listen on; must not be empty (write ``0.0.0.0`` or ``::`` to listen on every
      interface)
    - ``port``: precedence: ``--port`` > ``STACKD_PORT`` > ``server.port``; 0 picks a free port
    - ``tls_certfile``, ``tls_keyfile``: serve HTTPS when both are set; ``stackd validate`` loads them
      as ``serve`` does: an unreadable file, no PEM, a key of another certificate or a key with a
      passphrase is an error naming the file
    - ``tls_cafile``: with TLS: require client certificates signed by this CA (mTLS)
    - ``auth``: authentication of callers (sections below; docs/auth.md)
    - ``quota``: request quotas, counted after authentication (section below; docs/quota.md); none:
      unlimited
    - ``max_body_bytes``: larger request bodies get 413
    - ``max_json_depth``: JSON nested deeper (request bodies, ``X-LlamaStack-Provider-Data``) gets 400
      naming the place; 2 to 200
    - ``max_models``: registering a model beyond this many gets 400; keeps ``GET /v1/models`` whole and
      quick
    - ``max_shields``: the same for shields
    - ``default_moderation_shield``: the shield ``/v1/moderations`` uses when a request omits ``model``
      (a shield id, or the model a shield uses); without it such a request gets 400 (docs/safety.md)
    - ``max_moderation_inputs``: items of one moderation request's ``input`` (each is one shield
      call); more gets 400
    - ``guardrail_window_chars``: output shields of a streamed answer check it each time this many new
      characters came (and at the end), so at most this much text (plus one chunk) is held back
    - ``allowed_hosts``: ``Host`` names the server answers (without port; ``[::1]`` for IPv6; ``"*"``
      for any); another gets 421. Default: the loopback names when ``host`` is a loopback address,
      else any. Guards a local server against DNS rebinding. Behind a reverse proxy on the same machine
      that passes the public ``Host`` on (nginx ``proxy_set_header Host $host``), list the public name
      here
    - ``trusted_proxies``: addresses or CIDR networks (``10.0.0.0/8``, ``::1``) of reverse proxies whose
      ``X-Forwarded-For`` / ``Forwarded`` headers name the client; from any other peer those headers are
      ignored and the client is the socket peer (docs/auth.md)
    - ``body_timeout``: seconds a client has to send a request body once its headers arrived; then 408
    - ``header_timeout``: seconds a new connection has to send its first request's headers (and, with
      TLS, to finish the handshake); then 408 and the connection closes
    - ``keepalive_timeout``: seconds an idle keep-alive connection stays open (and a later request's
      headers must arrive within)
    - ``max_header_bytes``: longest request line or header; longer ones get 414 / 431
    - ``max_connections``: open client connections; a new one past the limit gets 503 and is closed.
      Default: half of ``ulimit -n``
    - ``shutdown_grace``: seconds in-flight requests get after SIGTERM/SIGINT; streams still running
      then end with an error frame
    - ``stream_stall_timeout``: seconds a streaming client may stop reading before the stream and its
      upstream request are dropped; a finite number above 0 (like every number of the config: ``.nan``
      and ``.inf`` are errors)
    - ``max_upstream_body_bytes``: largest non-streamed answer a provider accepts from its upstream
      (checked on ``Content-Length``, then while reading); larger is 502
    - ``max_upstream_line_bytes``: longest line of an upstream stream (an SSE ``data:`` line, an NDJSON
      object); longer is 502, or an error frame once the stream began
    - ``max_stored_completion_bytes``: largest chat completion kept for the inference store (its message
      text, tool calls and logprobs, about what they take in memory); a larger one is answered in full
      but not stored, with one warning in the log
    - ``max_store_queue_bytes``: completions waiting to be written (the database is slow or away) are
      dropped, oldest first, past this (or past 10 000 of them), with a warning
    - ``route_policy``: route rules for a server **without** auth (everyone is anonymous, so only rules
      without ``allow`` admit); with auth, write them in ``auth.route_policy`` (this key is then read as
      its deprecated alias, with a warning; both at once is an error)
    - ``workers``: processes serving the port (1 to 64; Linux), sharing the stores; ``stackd serve
      --workers N`` overrides it (docs/deployment.md)
    - ``metrics``: ``/metrics`` (section below; docs/operations.md)
    - ``access_log``: one access line per request (JSON off a terminal); ``stackd serve
      --[no-]access-log`` overrides it
    """

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
    """One YAML file describes a stack. ``stackd validate FILE`` checks it without starting anything;
    every problem is reported at once as ``message @ $.path (file:line:col)`` and the exit status is 2.
    Unknown keys are warnings with their location (a typo never passes silently).

    ```yaml
    version: 2
    image_name: ollama
    apis: [inference]
    providers:
      inference:
      - provider_id: ollama
        provider_type: remote::ollama
        config: {url: "${env.OLLAMA_URL:=http://localhost:11434}"}
    models:
    - model_id: llama3.2:3b
    server:
      port: 8321
    ```

    The state folder is ``$STACKD_HOME/<image_name>`` (default ``~/.stackd/<image_name>``). Keys of
    Llama Stack 0.2.x run files for APIs stackd does not serve (``vector_dbs``, ``datasets``,
    ``scoring_fns``, ``benchmarks``, ``tool_groups``, ``logging``, ``external_providers_dir``, ...) are
    accepted with a warning. An API listed in ``apis`` whose provider plugin is not installed is an
    error naming the plugin to install; ``stackd serve --skip-missing-apis`` starts anyway, says loudly
    which APIs are missing, and answers their routes with 501 naming the package.

    One live server per SQLite metadata store: a server holds a lock on ``<db_path>.lock`` (an
    ``flock``, released by the kernel when the process ends, however it ends) from before it reconciles
    until it stops. A second ``stackd serve`` on the same store exits naming the holder's pid before it
    changes anything. To run a second server, give it its own state: another ``STACKD_HOME``, another
    ``image_name``, or another ``metadata_store.db_path``.

    - ``version``: accepted as Llama Stack writes it (an integer or a string)
    - ``image_name``: the stack's name: names its state folder. A name, not a path: up to 128 letters,
      digits, ``.``, ``_`` or ``-``, starting with a letter or digit (to keep state elsewhere set
      ``STACKD_HOME`` or the stores' ``db_path``); default ``stackd``
    - ``conda_env``: the older spelling of ``image_name`` (same rule)
    - ``apis``: the APIs to serve: ``inference``, ``safety``; ``models``, ``shields``, ``providers`` and
      ``inspect`` come with the server
    - ``providers``: the provider instances of each API (``{inference: [...], safety: [...]}``)
    - ``metadata_store``: where registered models and shields live; default: SQLite in the state folder.
      This build keeps it in SQLite
    - ``inference_store``: where OpenAI chat completions are stored for ``GET /v1/chat/completions``;
      default: SQLite in the state folder; SQLite or PostgreSQL
    - ``models``: models to register at start
    - ``shields``: shields to register at start
    - ``server``: host, port, TLS, auth, quota and limits
    """

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
