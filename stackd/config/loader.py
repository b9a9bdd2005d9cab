"""Loading a run config: YAML -> env substitution -> attrs -> cross checks -> plugin configs.

Every problem is collected and reported at once as ``message @ $.path (file:line:col)``.
"""

from __future__ import annotations

import difflib
import importlib.util
import io
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from stackd.config.envsubst import substitute
from stackd.config.schema import (
    IGNORED_TOP_LEVEL_KEYS,
    ModelInput,
    ProviderEntry,
    RunConfig,
    ServerConfig,
    ShieldInput,
)
from stackd.convert import converter, field_errors, unknown_keys
from stackd.errors import FieldError
from stackd.providers.discovery import Catalog, PluginLoadError, package_hint
from stackd.providers.spec import ProviderSpec

__all__ = ["ConfigError", "LoadedConfig", "Problem", "ResolvedProvider", "load_config", "parse_config"]

# APIs of Llama Stack 0.2.x. stackd serves those that an installed plugin serves; the
# resource APIs below come with the server itself.
KNOWN_APIS = (
    "inference",
    "safety",
    "agents",
    "vector_io",
    "telemetry",
    "datasetio",
    "scoring",
    "eval",
    "post_training",
    "tool_runtime",
    "files",
)
BUILTIN_APIS = (
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
DISABLED = "__disabled__"  # Llama Stack 0.2.x's sentinel for `${env.X:=__disabled__}`
_INVALID = "(invalid)"  # stand-in provider_type for an entry whose errors are reported already


@attrs.frozen
class Problem:
    path: str
    message: str
    location: str | None = None

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"{self.message} @ {self.path}{where}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(str(p) for p in problems))


@attrs.frozen
class ResolvedProvider:
    api: str
    provider_id: str
    provider_type: str
    spec: ProviderSpec
    config: Any
    raw_config: dict[str, Any]


@attrs.frozen
class LoadedConfig:
    run: RunConfig
    providers: dict[str, ResolvedProvider]
    warnings: list[Problem]
    missing_apis: dict[str, str]
    """API -> why it is not served (only with skip_missing_apis)."""
    source: Path | None = None
    models: list[ModelInput] = attrs.field(factory=list)
    shields: list[ShieldInput] = attrs.field(factory=list)

    def served_apis(self) -> list[str]:
        return sorted({p.api for p in self.providers.values()})


class _Locator:
    """Maps ``$.a.b[0]`` paths to ``file:line:col`` using ruamel's node positions."""

    def __init__(self, tree: Any, filename: str) -> None:
        self.filename = filename
        self.positions: dict[str, tuple[int, int]] = {}
        self._index(tree, "$")

    def _index(self, node: Any, path: str) -> None:
        if isinstance(node, CommentedMap):
            for key in node:
                try:
                    line, col = node.lc.value(key)
                except (KeyError, TypeError, AttributeError):
                    continue
                try:
                    kline, kcol = node.lc.key(key)
                except (KeyError, TypeError, AttributeError):
                    kline, kcol = line, col
                child = f"{path}.{key}"
                self.positions[child] = (line, col)
                self.positions[child + "#key"] = (kline, kcol)
                self._index(node[key], child)
        elif isinstance(node, CommentedSeq):
            for i, item in enumerate(node):
                try:
                    line, col = node.lc.item(i)
                except (KeyError, TypeError, AttributeError, IndexError):
                    continue
                child = f"{path}[{i}]"
                self.positions[child] = (line, col)
                self._index(item, child)

    def locate(self, path: str, *, key: bool = False) -> str | None:
        probe = path
        while probe:
            pos = self.positions.get(probe + "#key") if key else None
            pos = pos or self.positions.get(probe)
            if pos is not None:
                return f"{self.filename}:{pos[0] + 1}:{pos[1] + 1}"
            cut = max(probe.rfind("."), probe.rfind("["))
            if cut <= 0:
                break
            probe = probe[:cut]
        return None


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def load_config(
    path: Path | str,
    *,
    env: Mapping[str, str] | None = None,
    catalog: Catalog | None = None,
    skip_missing_apis: bool = False,
) -> LoadedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("$", f"cannot read config file {path}: {exc.strerror or exc}")]) from None
    return parse_config(text, filename=str(path), env=env, catalog=catalog, skip_missing_apis=skip_missing_apis,
                        source=path)


def parse_config(
    text: str,
    *,
    filename: str = "<config>",
    env: Mapping[str, str] | None = None,
    catalog: Catalog | None = None,
    skip_missing_apis: bool = False,
    source: Path | None = None,
) -> LoadedConfig:
    env = os.environ if env is None else env
    yaml = YAML(typ="rt")
    try:
        tree = yaml.load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        loc = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        raise ConfigError([Problem("$", f"not valid YAML: {exc.problem}", loc)]) from None
    if tree is None:
        tree = CommentedMap()
    if not isinstance(tree, Mapping):
        raise ConfigError([Problem("$", "the config must be a mapping of keys to values", f"{filename}:1:1")])
    return _Builder(tree, filename, env, catalog or Catalog.from_entry_points(), skip_missing_apis, source).build()


class _Builder:
    def __init__(
        self,
        tree: Any,
        filename: str,
        env: Mapping[str, str],
        catalog: Catalog,
        skip_missing_apis: bool,
        source: Path | None,
    ) -> None:
        self.locator = _Locator(tree, filename)
        self.tree = tree
        self.env = env
        self.catalog = catalog
        self.skip_missing_apis = skip_missing_apis
        self.source = source
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message, self.locator.locate(path)))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message, self.locator.locate(path, key=True)))

    def _field_errors(self, errors: list[FieldError]) -> None:
        for err in errors:
            self.error(err.loc, err.msg)

    def build(self) -> LoadedConfig:
        data, env_errors = substitute(_plain(self.tree), self.env)
        self._field_errors(env_errors)

        for key in list(data):
            if key in IGNORED_TOP_LEVEL_KEYS:
                self.warn(f"$.{key}", f"'{key}' is a Llama Stack setting that stackd ignores")
                del data[key]

        for path in unknown_keys(data, RunConfig):
            self.warn(path, f"unknown key {path.rsplit('.', 1)[-1]!r}{self._suggest(path)}; it is ignored")

        self.nulled = {
            (section, i)
            for section in ("models", "shields")
            for i, item in enumerate(data.get(section) or [])
            if isinstance(item, Mapping) and "provider_id" in item and item["provider_id"] in (None, "")
        }
        self.skipped: set[str] = set()
        self.failed: set[str] = set()  # already reported; their resources are not reported again
        run = self._structure(data)
        providers, missing = self._providers(run)
        models = self._resources(run, providers, "models")
        shields = self._resources(run, providers, "shields")
        self._server(run)
        self._dependencies(providers)
        if self.problems:
            raise ConfigError(self.problems, self.warnings)
        return LoadedConfig(run, providers, self.warnings, missing, self.source, models, shields)

    def _try(self, value: Any, tp: Any, path: str) -> tuple[bool, Any]:
        try:
            return True, converter.structure(value, tp)
        except Exception as exc:  # noqa: BLE001 - every structuring failure becomes a Problem
            self._field_errors(field_errors(exc, path))
            return False, None

    def _structure(self, data: dict[str, Any]) -> RunConfig:
        """Section by section and item by item, so one bad value does not hide the other problems.

        A provider, model or shield that fails keeps its place (paths stay right) as an inert
        stand-in; its id goes into ``self.failed`` so nothing is reported twice about it.
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
                    self.failed.add(ident)
                out.append(ProviderEntry(provider_type=_INVALID, provider_id=ident if isinstance(ident, str) else None))
            elif tp is ModelInput:
                out.append(ModelInput(model_id=None))
            else:
                out.append(ShieldInput(shield_id=None))
        return out

    def _suggest(self, path: str) -> str:
        key = path.rsplit(".", 1)[-1]
        parent = path.rsplit(".", 1)[0]
        fields: list[str] = []
        if parent == "$":
            fields = [f.name for f in attrs.fields(RunConfig)]
        elif parent == "$.server":
            fields = [f.name for f in attrs.fields(ServerConfig)]
        close = difflib.get_close_matches(key, fields, n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def _providers(self, run: RunConfig) -> tuple[dict[str, ResolvedProvider], dict[str, str]]:
        resolved: dict[str, ResolvedProvider] = {}
        first_seen: dict[tuple[str, str], str] = {}
        missing: dict[str, str] = {}
        apis = set(run.apis)
        for i, api in enumerate(run.apis):
            if api not in KNOWN_APIS and api not in BUILTIN_APIS:
                close = difflib.get_close_matches(api, KNOWN_APIS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known APIs: {', '.join(KNOWN_APIS)}"
                self.error(f"$.apis[{i}]", f"unknown API {api!r}{hint}")
        for api, entries in run.providers.items():
            if api not in apis:
                if api in KNOWN_APIS or api in BUILTIN_APIS:
                    self.warn(f"$.providers.{api}", f"providers for {api!r} are configured but {api!r} "
                              "is not listed in apis; they are not started")
                else:
                    self.error(f"$.providers.{api}", f"unknown API {api!r}; known APIs: {', '.join(KNOWN_APIS)}")
                continue
            for i, entry in enumerate(entries):
                path = f"$.providers.{api}[{i}]"
                if not entry.provider_id or entry.provider_id == DISABLED or entry.provider_type == _INVALID:
                    continue  # disabled through ${env.X:+id}, or already reported
                # Llama Stack scopes ids by API (agents and telemetry both say meta-reference).
                if (api, entry.provider_id) in first_seen:
                    self.error(f"{path}.provider_id", f"provider_id {entry.provider_id!r} is already used "
                               f"at {first_seen[api, entry.provider_id]}; provider ids must be unique")
                    continue
                first_seen[api, entry.provider_id] = path
                provider = self._provider(api, path, entry, missing)
                if provider is None:
                    continue
                if entry.provider_id in resolved:
                    other = resolved[entry.provider_id].api
                    self.error(f"{path}.provider_id", f"provider_id {entry.provider_id!r} is also used by the "
                               f"{other} API; give each served provider its own id")
                    continue
                resolved[entry.provider_id] = provider
        for api in run.apis:
            if api in KNOWN_APIS and api not in missing and not any(p.api == api for p in resolved.values()):
                if not run.providers.get(api):
                    self.error("$.apis", f"API {api!r} is listed but no provider serves it; add one under "
                               f"providers.{api}")
                elif not self.failed:
                    self.warn(f"$.providers.{api}", f"every provider of the {api} API is disabled, so its "
                              "routes will answer 404 for every model")
        return resolved, missing

    def _provider(
        self, api: str, path: str, entry: ProviderEntry, missing: dict[str, str]
    ) -> ResolvedProvider | None:
        self.failed.add(entry.provider_id or "")  # until it resolves
        try:
            spec = self.catalog.get(entry.provider_type)
        except KeyError as exc:
            message = str(exc.args[0])
            if self.skip_missing_apis:
                self.skipped.add(entry.provider_id or "")
                missing.setdefault(api, f"{entry.provider_type} is not installed "
                                   f"(pip install {package_hint(entry.provider_type)})")
                self.warn(f"{path}.provider_type", message)
                return None
            self.error(f"{path}.provider_type", message)
            return None
        except PluginLoadError as exc:
            if self.skip_missing_apis:
                self.skipped.add(entry.provider_id or "")
                missing.setdefault(api, str(exc))
                self.warn(f"{path}.provider_type", str(exc))
                return None
            self.error(f"{path}.provider_type", str(exc))
            return None
        if spec.api != api:
            self.error(f"{path}.provider_type", f"{entry.provider_type!r} serves the {spec.api!r} API, "
                       f"not {api!r}; move it under providers.{spec.api}")
            return None
        for unknown in unknown_keys(entry.config, spec.config_class, f"{path}.config"):
            self.warn(unknown, f"unknown key {unknown.rsplit('.', 1)[-1]!r} for {entry.provider_type}; it is ignored")
        try:
            config: Any = converter.structure(entry.config, spec.config_class)
        except Exception as exc:  # noqa: BLE001
            self._field_errors(field_errors(exc, f"{path}.config"))
            self.failed.add(entry.provider_id or "")
            return None
        assert entry.provider_id is not None
        self.failed.discard(entry.provider_id)
        return ResolvedProvider(api, entry.provider_id, entry.provider_type, spec, config, dict(entry.config))

    def _owner(self, api: str, path: str, provider_id: str | None, providers: dict[str, ResolvedProvider],
               kind: str) -> str | None:
        candidates = [p.provider_id for p in providers.values() if p.api == api]
        if provider_id is None:
            if len(candidates) == 1:
                return candidates[0]
            if not candidates and self.failed:
                return None  # its provider's own error is reported already
            if not candidates:
                self.error(path, f"this {kind} needs a provider of the {api} API, and none is configured")
            else:
                self.error(f"{path}.provider_id", f"provider_id is required: several {api} providers are "
                           f"configured ({', '.join(sorted(candidates))})")
            return None
        if provider_id == DISABLED or provider_id in self.failed:
            return None
        if provider_id not in providers:
            known = ", ".join(sorted(candidates)) or "none"
            self.error(f"{path}.provider_id", f"no provider with provider_id {provider_id!r}; "
                       f"{api} providers: {known}")
            return None
        if providers[provider_id].api != api:
            self.error(f"{path}.provider_id", f"provider {provider_id!r} serves {providers[provider_id].api!r}, "
                       f"not {api}")
            return None
        return provider_id

    def _skip(self, run: RunConfig, section: str, i: int, provider_id: str | None) -> bool:
        """Resources go with their provider when it is disabled through the environment or skipped."""
        path = f"$.{section}[{i}]"
        if (section, i) in self.nulled:
            return True
        if provider_id is None:
            return False
        if provider_id in self.skipped:
            self.warn(path, f"skipped: provider {provider_id!r} is not installed")
            return True
        named = {e.provider_id for entries in run.providers.values() for e in entries}
        if provider_id not in named and any(
            not e.provider_id or e.provider_id == DISABLED for entries in run.providers.values() for e in entries
        ):
            self.warn(path, f"skipped: provider {provider_id!r} is not configured (some providers are disabled)")
            return True
        return False

    def _resources(self, run: RunConfig, providers: dict[str, ResolvedProvider], section: str) -> list[Any]:
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
            if self._skip(run, section, i, item.provider_id):
                continue
            if ident in seen:
                self.error(f"{path}.{id_field}", f"{kind} {ident!r} is already defined at {seen[ident]}")
                continue
            seen[ident] = path
            if kind == "model" and item.model_type == "embedding" and "embedding_dimension" not in item.metadata:
                self.error(f"{path}.metadata", "an embedding model needs metadata.embedding_dimension "
                           "(the length of its vectors, e.g. 384)")
            owner = self._owner(api, path, item.provider_id, providers, kind)
            if owner is not None:
                out.append(attrs.evolve(item, provider_id=owner))
        return out

    def _dependencies(self, providers: dict[str, ResolvedProvider]) -> None:
        from stackd.providers.resolver import DependencyError, build_order  # it imports this module

        try:
            build_order(providers)
        except DependencyError as exc:
            self.error("$.providers", str(exc))

    def _stores(self, run: RunConfig) -> None:
        """Settings this build cannot honour are errors, never silently ignored: a quota or an
        auth section that did nothing would leave a server open that its operator believes closed."""
        if run.server.auth is not None:
            self.error("$.server.auth", "authentication is not available in this build of stackd yet; remove "
                       "server.auth, or keep the server behind an authenticating proxy until it is")
        if run.server.quota is not None:
            self.error("$.server.quota", "quotas are not available in this build of stackd yet; remove "
                       "server.quota, or enforce limits in a proxy in front of it until they are")
        if run.metadata_store is not None and run.metadata_store.type != "sqlite":
            self.error("$.metadata_store.type", f"metadata_store type {run.metadata_store.type!r} is not "
                       "available in this build of stackd yet; use type: sqlite")
        store = run.inference_store
        if store is not None and store.type not in ("sqlite", "postgres"):
            self.error("$.inference_store.type", f"inference_store type {store.type!r} cannot hold chat "
                       "completions; use sqlite or postgres")
        if store is not None and store.type == "postgres" and importlib.util.find_spec("asyncpg") is None:
            self.error("$.inference_store.type", "a postgres inference store needs asyncpg: "
                       "pip install 'stackd[postgres]'")

    def _server(self, run: RunConfig) -> None:
        self._stores(run)
        server = run.server
        if (server.tls_certfile is None) != (server.tls_keyfile is None):
            self.error("$.server", "TLS needs both tls_certfile and tls_keyfile")
        if server.tls_cafile is not None and server.tls_certfile is None:
            self.error("$.server.tls_cafile", "client certificates (tls_cafile) need TLS: set tls_certfile "
                       "and tls_keyfile too")
        for name in ("tls_certfile", "tls_keyfile", "tls_cafile"):
            value = getattr(server, name)
            if value is not None and not Path(value).is_file():
                self.error(f"$.server.{name}", f"file not found: {value}")
        if server.max_body_bytes < 1024:
            self.error("$.server.max_body_bytes", "must be at least 1024 bytes")
