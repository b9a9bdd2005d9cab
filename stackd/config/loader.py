"""Reading a run config: YAML -> env substitution -> attrs -> checks across sections.

Nothing here knows how providers are built: each enabled provider entry is handed on as a
:class:`ProviderAt`, and :mod:`stackd.providers.resolve` checks its ``config:`` against its
plugin's schema, writing to the same :class:`~stackd.config.problems.Report`. Every problem is
reported at once as ``message @ $.path (file:line:col)``.
"""

from __future__ import annotations

import difflib
import io
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from stackd.apis.known import PROVIDER_APIS, RESOURCE_APIS
from stackd.config.auth import OAuth2TokenConfig
from stackd.config.bounds import check_shape, read_text
from stackd.config.envsubst import substitute
from stackd.config.problems import ConfigError, Locator, Problem, Report
from stackd.config.schema import (
    IGNORED_TOP_LEVEL_KEYS,
    ModelInput,
    ProviderEntry,
    RunConfig,
    ServerConfig,
    ShieldInput,
)
from stackd.config.stores import (
    DEFAULT_TABLES,
    PostgresStoreConfig,
    RedisStoreConfig,
    SqliteStoreConfig,
    namespace_problem,
    table_name_problem,
)
from stackd.config.tls import TLSFileError, read_file, server_ssl_context
from stackd.convert import converter, field_errors, unknown_keys
from stackd.db.drivers import missing_driver

__all__ = ["ParsedConfig", "ProviderAt", "read_config", "parse_text"]

DISABLED = "__disabled__"  # Llama Stack 0.2.x's sentinel for `${env.X:=__disabled__}`
_INVALID = "(invalid)"  # stand-in provider_type for an entry whose errors are reported already
_KNOWN_APIS = tuple(PROVIDER_APIS)


# What route rules may name: every route stackd serves, and the prefixes of the APIs it knows.
_KNOWN_ROUTES = (
    "/v1/health", "/v1/version", "/v1/providers", "/v1/inspect/routes", "/v1/models", "/v1/shields",
    "/v1/openai/v1/models", "/v1/chat/completions", "/v1/openai/v1/chat/completions",
    *(prefix for api in PROVIDER_APIS.values() for prefix in api.prefixes),
)


@attrs.frozen
class ProviderAt:
    """An enabled provider entry of the file, under its API, and where it stands."""

    api: str
    path: str
    entry: ProviderEntry

    @property
    def provider_id(self) -> str:
        assert self.entry.provider_id is not None
        return self.entry.provider_id


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def read_config(path: Path | str, *, env: Mapping[str, str] | None = None) -> ParsedConfig:
    path = Path(path)
    text = read_text(path)
    return parse_text(text, filename=str(path), env=env, source=path)


def parse_text(
    text: str,
    *,
    filename: str = "<config>",
    env: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> ParsedConfig:
    """The config of ``text``; problems go to its ``report`` (raised by whoever finishes loading),
    except a file that is not a YAML mapping, which raises :class:`ConfigError` at once."""
    env = os.environ if env is None else env
    yaml = YAML(typ="rt")
    try:
        check_shape(text, filename)
        tree = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        loc = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        raise ConfigError([Problem("$", f"not valid YAML: {exc.problem}", loc)]) from None
    except YAMLError as exc:  # unmarked: a control character in the text, say
        raise ConfigError([Problem("$", f"not valid YAML: {exc}", filename)]) from None
    except ValueError as exc:  # a value ruamel cannot build: an integer of 5,000 digits, say
        raise ConfigError([Problem("$", f"not valid YAML: {exc}", filename)]) from None
    if tree is None:
        tree = CommentedMap()
    if not isinstance(tree, Mapping):
        raise ConfigError([Problem("$", "the config must be a mapping of keys to values", f"{filename}:1:1")])
    return ParsedConfig(tree, filename, env, source)


class ParsedConfig:
    """A run config read and checked on its own: ``run``, the enabled ``providers`` entries,
    and the ``report`` of every problem found so far."""

    run: RunConfig
    providers: list[ProviderAt]

    def __init__(self, tree: Any, filename: str, env: Mapping[str, str], source: Path | None) -> None:
        self.report = Report(Locator(tree, filename))
        self.source = source
        self._failed: set[str] = set()  # ids of entries reported already; their resources are not reported again
        data, env_errors = substitute(_plain(tree), env)
        self.report.field_errors(env_errors)

        for key in list(data):
            if key in IGNORED_TOP_LEVEL_KEYS:
                self.report.warn(f"$.{key}", f"'{key}' is a Llama Stack setting that stackd ignores")
                del data[key]

        for path in unknown_keys(data, RunConfig):
            self.report.warn(path, f"unknown key {path.rsplit('.', 1)[-1]!r}{self._suggest(path)}; it is ignored")

        self._nulled = {
            (section, i)
            for section in ("models", "shields")
            for i, item in enumerate(data.get(section) or [])
            if isinstance(item, Mapping) and "provider_id" in item and item["provider_id"] in (None, "")
        }
        self.run = self._structure(data)
        self.providers = self._entries(self.run)
        self._server(self.run)

    def resources(self, skipped: Mapping[str, str] | None = None) -> tuple[list[ModelInput], list[ShieldInput]]:
        """The models and shields of the file that will be registered, each with its provider;
        ``skipped`` maps the ids of providers that will not run to why (they take their
        resources with them, with a warning)."""
        skipped = skipped or {}
        return self._resources(self.run, "models", skipped), self._resources(self.run, "shields", skipped)

    def _try(self, value: Any, tp: Any, path: str) -> tuple[bool, Any]:
        try:
            return True, converter.structure(value, tp)
        except Exception as exc:  # noqa: BLE001 - every structuring failure becomes a Problem
            self.report.field_errors(field_errors(exc, path))
            return False, None

    def _structure(self, data: dict[str, Any]) -> RunConfig:
        """Section by section and item by item, so one bad value does not hide the other problems.

        A provider, model or shield that fails keeps its place (paths stay right) as an inert
        stand-in; its id goes into ``self._failed`` so nothing is reported twice about it.
        """
        hints = typing.get_type_hints(RunConfig, include_extras=True)
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in hints:
                continue
            if name == "providers" and isinstance(value, Mapping):
                values[name] = {
                    str(api): self._items(entries, ProviderEntry, f"$.providers.{api}", "provider_id")
                    for api, entries in value.items()
                }
            elif name in ("models", "shields") and isinstance(value, list):
                item_type = ModelInput if name == "models" else ShieldInput
                values[name] = self._items(value, item_type, f"$.{name}", "provider_id")
            else:
                ok, structured = self._try(value, hints[name], f"$.{name}")
                if ok:
                    values[name] = structured
        return RunConfig(**values)

    def _items(self, items: Any, tp: type, path: str, id_key: str) -> list[Any]:
        ok, checked = self._try(items, list[Any], path)
        if not ok:
            return []
        out: list[Any] = []
        for i, item in enumerate(checked):
            ok, structured = self._try(item, tp, f"{path}[{i}]")
            if ok:
                out.append(structured)
                continue
            ident = item.get(id_key) if isinstance(item, Mapping) else None
            if tp is ProviderEntry:
                if isinstance(ident, str):
                    self._failed.add(ident)
                out.append(ProviderEntry(provider_type=_INVALID, provider_id=ident if isinstance(ident, str) else None))
            elif tp is ModelInput:
                out.append(ModelInput(model_id=None))
            else:
                out.append(ShieldInput(shield_id=None))
        return out

    def _suggest(self, path: str) -> str:
        if path == "$.server.quota.trusted_proxies":
            return " (it moved: server.trusted_proxies decides the client address of auth and quota alike)"
        key = path.rsplit(".", 1)[-1]
        parent = path.rsplit(".", 1)[0]
        fields: list[str] = []
        if parent == "$":
            fields = [f.name for f in attrs.fields(RunConfig)]
        elif parent == "$.server":
            fields = [f.name for f in attrs.fields(ServerConfig)]
        close = difflib.get_close_matches(key, fields, n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def _entries(self, run: RunConfig) -> list[ProviderAt]:
        """The provider entries that will be started: listed API, an id, not disabled, unique."""
        entries: list[ProviderAt] = []
        first_seen: dict[tuple[str, str], str] = {}
        apis = set(run.apis)
        for i, api in enumerate(run.apis):
            if api not in PROVIDER_APIS and api not in RESOURCE_APIS:
                close = difflib.get_close_matches(api, _KNOWN_APIS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known APIs: {', '.join(_KNOWN_APIS)}"
                self.report.error(f"$.apis[{i}]", f"unknown API {api!r}{hint}")
        for api, items in run.providers.items():
            if api not in apis:
                if api in PROVIDER_APIS or api in RESOURCE_APIS:
                    self.report.warn(f"$.providers.{api}", f"providers for {api!r} are configured but {api!r} "
                                     "is not listed in apis; they are not started")
                else:
                    self.report.error(f"$.providers.{api}", f"unknown API {api!r}; known APIs: "
                                      f"{', '.join(_KNOWN_APIS)}")
                continue
            for i, entry in enumerate(items):
                path = f"$.providers.{api}[{i}]"
                if not entry.provider_id or entry.provider_id == DISABLED or entry.provider_type == _INVALID:
                    continue  # disabled through ${env.X:+id}, or already reported
                # Llama Stack scopes ids by API (agents and telemetry both say meta-reference).
                if (api, entry.provider_id) in first_seen:
                    self.report.error(f"{path}.provider_id", f"provider_id {entry.provider_id!r} is already used "
                                      f"at {first_seen[api, entry.provider_id]}; provider ids must be unique")
                    continue
                first_seen[api, entry.provider_id] = path
                entries.append(ProviderAt(api, path, entry))
        for api in run.apis:
            if api in PROVIDER_APIS and not any(p.api == api for p in entries):
                if not run.providers.get(api):
                    self.report.error("$.apis", f"API {api!r} is listed but no provider serves it; add one under "
                                      f"providers.{api}")
                elif not self._failed:
                    self.report.warn(f"$.providers.{api}", f"every provider of the {api} API is disabled, so its "
                                     "routes will answer 404 for every model")
        return entries

    def _owner(self, api: str, path: str, provider_id: str | None, kind: str) -> str | None:
        candidates = [p.provider_id for p in self.providers if p.api == api]
        api_of = {p.provider_id: p.api for p in self.providers}
        if provider_id is None:
            if len(candidates) == 1:
                return candidates[0]
            if not candidates and self._failed:
                return None  # its provider's own error is reported already
            if not candidates:
                self.report.error(path, f"this {kind} needs a provider of the {api} API, and none is configured")
            else:
                self.report.error(f"{path}.provider_id", f"provider_id is required: several {api} providers are "
                                  f"configured ({', '.join(sorted(candidates))})")
            return None
        if provider_id == DISABLED or provider_id in self._failed:
            return None
        if provider_id not in api_of:
            known = ", ".join(sorted(candidates)) or "none"
            self.report.error(f"{path}.provider_id", f"no provider with provider_id {provider_id!r}; "
                              f"{api} providers: {known}")
            return None
        if api_of[provider_id] != api:
            self.report.error(f"{path}.provider_id", f"provider {provider_id!r} serves {api_of[provider_id]!r}, "
                              f"not {api}")
            return None
        return provider_id

    def _skip(self, run: RunConfig, section: str, i: int, provider_id: str | None, skipped: Mapping[str, str]) -> bool:
        """Resources go with their provider when it is disabled through the environment or skipped."""
        path = f"$.{section}[{i}]"
        if (section, i) in self._nulled:
            return True
        if provider_id is None:
            return False
        if provider_id in skipped:
            self.report.warn(path, f"skipped: provider {provider_id!r} {skipped[provider_id]}")
            return True
        named = {e.provider_id for entries in run.providers.values() for e in entries}
        if provider_id not in named and any(
            not e.provider_id or e.provider_id == DISABLED for entries in run.providers.values() for e in entries
        ):
            self.report.warn(path, f"skipped: provider {provider_id!r} is not configured (some providers are disabled)")
            return True
        return False

    def _resources(self, run: RunConfig, section: str, skipped: Mapping[str, str]) -> list[Any]:
        """The models (or shields) of the file that will be registered, each with its provider."""
        api, kind, id_field = ("inference", "model", "model_id") if section == "models" else (
            "safety", "shield", "shield_id")
        out: list[Any] = []
        seen: dict[str, str] = {}
        for i, item in enumerate(getattr(run, section)):
            path = f"$.{section}[{i}]"
            ident = getattr(item, id_field)
            if not ident or ident == DISABLED or item.provider_id == DISABLED:
                continue
            if self._skip(run, section, i, item.provider_id, skipped):
                continue
            if ident in seen:
                self.report.error(f"{path}.{id_field}", f"{kind} {ident!r} is already defined at {seen[ident]}")
                continue
            seen[ident] = path
            if kind == "model" and item.model_type == "embedding" and "embedding_dimension" not in item.metadata:
                self.report.error(f"{path}.metadata", "an embedding model needs metadata.embedding_dimension "
                                  "(the length of its vectors, e.g. 384)")
            owner = self._owner(api, path, item.provider_id, kind)
            if owner is not None and owner in skipped:
                self.report.warn(path, f"skipped: provider {owner!r} {skipped[owner]}")
            elif owner is not None:
                out.append(attrs.evolve(item, provider_id=owner))
        return out

    def _auth(self, server: ServerConfig) -> None:
        auth = server.auth
        # One setting: server.auth.route_policy. server.route_policy is read into the same place,
        # as its alias, for servers without auth (and old configs); both at once is ambiguous.
        if server.route_policy and auth is not None:
            if auth.route_policy:
                self.report.error("$.server.route_policy", "route rules are set twice; keep only "
                                  "server.auth.route_policy (server.route_policy is its alias without auth)")
            else:
                self.report.warn("$.server.route_policy", "deprecated with auth on: move these rules to "
                                 "server.auth.route_policy; they are read from here for now")
        for path, rules in (("$.server.route_policy", server.route_policy),
                            ("$.server.auth.route_policy", auth.route_policy if auth is not None else [])):
            for i, rule in enumerate(rules):
                for j, route in enumerate(rule.routes):
                    if not any(route.startswith(k) or k.startswith(route) for k in _KNOWN_ROUTES):
                        self.report.warn(f"{path}[{i}].routes[{j}]", f"{route!r} names no route of stackd; "
                                         "write an exact path (/v1/models) or a prefix ending in '/' (/v1/inference/)")
        if auth is None:
            return
        for i, access in enumerate(auth.access_policy):
            where = f"$.server.auth.access_policy[{i}]"
            if (access.permit is None) == (access.forbid is None):
                self.report.error(where, "a rule needs exactly one of permit or forbid")
            if access.when is not None and access.unless is not None:
                self.report.error(where, "a rule takes when or unless, not both")
        cfg = auth.config
        if isinstance(cfg, OAuth2TokenConfig) and (cfg.jwks is None) == (cfg.introspection is None):
            self.report.error("$.server.auth.config", "oauth2_token needs exactly one of jwks (verify JWTs "
                              "against a key set) or introspection (ask an RFC 7662 endpoint)")
        if isinstance(cfg, OAuth2TokenConfig) and cfg.tls_cafile is not None:
            try:
                read_file("tls_cafile", cfg.tls_cafile)
            except TLSFileError as exc:
                self.report.error("$.server.auth.config.tls_cafile", exc.message)
        if isinstance(cfg, OAuth2TokenConfig) and not cfg.verify_tls:
            self.report.warn("$.server.auth.config.verify_tls", "false: the JWKS is fetched without checking its "
                             "certificate, so anyone on the path can forge every token; set tls_cafile instead")

    def _stores(self, run: RunConfig) -> None:
        """Settings this build cannot honour are errors, never silently ignored: a quota section
        that did nothing would leave a server open that its operator believes limited."""
        quota = run.server.quota
        if quota is not None and quota.authenticated_max_requests is not None and run.server.auth is None:
            self.report.warn("$.server.quota.authenticated_max_requests", "without server.auth every caller is "
                             "anonymous and gets anonymous_max_requests; configure server.auth or remove this")
        if (quota is not None and isinstance(quota.kvstore, SqliteStoreConfig)
                and isinstance(run.metadata_store, SqliteStoreConfig)
                and Path(quota.kvstore.db_path).expanduser() == Path(run.metadata_store.db_path).expanduser()):
            self.report.error("$.server.quota.kvstore.db_path", "the quota store must be another file than the "
                              "metadata store (several servers share a quota store, one server owns its "
                              "metadata store)")
        store = run.inference_store
        if store is not None and store.type not in ("sqlite", "postgres", "none"):
            # Paged, filtered history wants an ordered index on disk; PostgreSQL is the shared one.
            self.report.error("$.inference_store.type", f"inference_store type {store.type!r} cannot hold chat "
                              "completions; use sqlite or postgres (or none to store nothing)")
        if store is not None and store.type == "none":
            store = None
        sections = [("$.metadata_store", run.metadata_store), ("$.inference_store", store),
                    ("$.server.quota.kvstore", quota.kvstore if quota is not None else None)]
        tables: dict[tuple[str, int, str, str], str] = {}
        for section, config in sections:
            if config is None:
                continue
            problem = missing_driver(config.type, section)
            if problem is not None:
                self.report.error(f"{section}.type", problem)
            if isinstance(config, PostgresStoreConfig | RedisStoreConfig) and config.namespace is not None:
                problem = namespace_problem(config.namespace)
                if problem is not None:
                    self.report.error(f"{section}.namespace", problem)
            if isinstance(config, PostgresStoreConfig):
                table = config.table_name or DEFAULT_TABLES[section]
                problem = table_name_problem(table)
                if problem is not None:
                    self.report.error(f"{section}.table_name", problem)
                where = (config.host, config.port, config.db, table)
                if where in tables:
                    self.report.error(f"{section}.table_name", f"{tables[where]} uses the table {table!r} of "
                                      "the same database: give each store its own table_name")
                tables[where] = section

    def _server(self, run: RunConfig) -> None:
        self._stores(run)
        server = run.server
        self._auth(server)
        if (server.tls_certfile is None) != (server.tls_keyfile is None):
            self.report.error("$.server", "TLS needs both tls_certfile and tls_keyfile")
        if server.tls_cafile is not None and server.tls_certfile is None:
            self.report.error("$.server.tls_cafile", "client certificates (tls_cafile) need TLS: set tls_certfile "
                              "and tls_keyfile too")
        try:
            if server.tls_certfile is not None and server.tls_keyfile is not None:
                server_ssl_context(server)
            else:
                for name in ("tls_certfile", "tls_keyfile", "tls_cafile"):
                    value = getattr(server, name)
                    if value is not None:
                        read_file(name, value)
        except TLSFileError as exc:
            self.report.error(f"$.server.{exc.field}", exc.message)
        for name in ("max_body_bytes", "max_upstream_body_bytes", "max_upstream_line_bytes",
                     "max_stored_completion_bytes", "max_store_queue_bytes"):
            if getattr(server, name) < 1024:
                self.report.error(f"$.server.{name}", "must be at least 1024 bytes")
