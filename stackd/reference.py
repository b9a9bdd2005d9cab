"""Reference documentation generated from the code: ``docs/configuration.md`` from the attrs schemas.

    python -m stackd.reference configuration --output docs/configuration.md --plugin remote::ollama ...
    tox -e docs                                   # the same, with every plugin of this repository

The descriptions live in the schema classes' docstrings: prose, then one bullet per field,
``- ``name``: what it is`` (``- ``a``, ``b``: ...`` for fields that share a text), continued on
lines indented by two spaces. Type and default come from the attrs fields. A field without a
bullet is an error naming the class and the field, so a new setting cannot ship undocumented.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from stackd.config import envsubst
from stackd.config.auth import (
    AccessRule,
    AccessScope,
    CustomAuth,
    CustomAuthConfig,
    IntrospectionConfig,
    JwksConfig,
    OAuth2TokenAuth,
    OAuth2TokenConfig,
    RoutePolicyRule,
)
from stackd.config.schema import (
    MetricsConfig,
    ModelInput,
    ProviderEntry,
    QuotaConfig,
    RunConfig,
    ServerConfig,
    ShieldInput,
)
from stackd.config.stores import NoStoreConfig, PostgresStoreConfig, RedisStoreConfig, SqliteStoreConfig
from stackd.convert import HttpUrl, Seconds, Secret, Tagged
from stackd.providers.discovery import Catalog, PluginLoadError

__all__ = ["CORE_SECTIONS", "UndocumentedField", "configuration_md", "field_docs", "main"]

#: (heading, path in the run config, class), in the order of the page.
CORE_SECTIONS: tuple[tuple[str, str, type], ...] = (
    ("Top level", "", RunConfig),
    ("Providers", "providers.<api>[]", ProviderEntry),
    ("Models", "models[]", ModelInput),
    ("Shields", "shields[]", ShieldInput),
    ("Stores: `type: sqlite`", "metadata_store, inference_store, server.quota.kvstore", SqliteStoreConfig),
    ("Stores: `type: postgres`", "metadata_store, inference_store, server.quota.kvstore", PostgresStoreConfig),
    ("Stores: `type: redis`", "metadata_store, server.quota.kvstore", RedisStoreConfig),
    ("Stores: `type: none`", "inference_store", NoStoreConfig),
    ("Server", "server", ServerConfig),
    ("Metrics", "server.metrics", MetricsConfig),
    ("Quota", "server.quota", QuotaConfig),
    ("Auth: `provider_type: oauth2_token`", "server.auth", OAuth2TokenAuth),
    ("Auth: `provider_type: custom`", "server.auth", CustomAuth),
    ("oauth2_token config", "server.auth.config", OAuth2TokenConfig),
    ("JWKS", "server.auth.config.jwks", JwksConfig),
    ("Token introspection", "server.auth.config.introspection", IntrospectionConfig),
    ("custom config", "server.auth.config", CustomAuthConfig),
    ("Route rules", "server.auth.route_policy[]", RoutePolicyRule),
    ("Access rules", "server.auth.access_policy[]", AccessRule),
    ("Access rule scope", "server.auth.access_policy[].permit, .forbid", AccessScope),
)

_BULLET = re.compile(r"^- ((?:``[A-Za-z0-9_]+``(?:, )?)+): ?(.*)$")
_NEWTYPES = {Seconds: "seconds", HttpUrl: "http(s) URL", Secret: "secret"}


class UndocumentedField(Exception):
    """A schema class has a field its docstring does not describe."""


def _markdown(text: str, *, cell: bool = False) -> str:
    text = re.sub(r"(?<!`)``(?!`)", "`", text)
    return text.replace("|", "\\|") if cell else text


def field_docs(cls: type) -> tuple[str, dict[str, str]]:
    """(prose, {field: description}) from ``cls``'s docstring; raises if a field is missing."""
    prose: list[str] = []
    entries: list[tuple[list[str], list[str]]] = []
    current: list[str] | None = None
    for line in (inspect.getdoc(cls) or "").splitlines():
        bullet = _BULLET.match(line)
        if bullet:
            current = [bullet.group(2)]
            entries.append((re.findall(r"``([A-Za-z0-9_]+)``", bullet.group(1)), current))
        elif current is not None and line.startswith("  ") and line.strip():
            current.append(line.strip())
        else:
            current = None
            prose.append(line)
    fields = {name: " ".join(parts) for names, parts in entries for name in names}
    where = f"{cls.__module__}.{cls.__qualname__}"
    missing = [f.name for f in attrs.fields(cls) if f.name not in fields]
    if missing:
        raise UndocumentedField(
            f"{where}: describe {', '.join(missing)} in its docstring (a line '- ``name``: what it is'); "
            "docs/configuration.md is generated from it"
        )
    unknown = [n for n in fields if n not in attrs.fields_dict(cls)]
    if unknown:
        raise UndocumentedField(f"{where}: its docstring describes {', '.join(unknown)}, which are not fields")
    return "\n".join(prose).strip(), fields


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(tp)
        if any(isinstance(m, Tagged) for m in marks):
            return f"mapping by `{next(m for m in marks if isinstance(m, Tagged)).tag}`"
        return _type_name(base)
    if tp in _NEWTYPES:
        return _NEWTYPES[tp]
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(p) for p in parts)
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(tp))
    if origin in (list, tuple, Sequence):
        (item, *_) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(item)}"
    if origin is dict:
        return "mapping"
    if isinstance(tp, type) and attrs.has(tp):
        return "mapping"
    names = {int: "integer", float: "number", str: "string", bool: "boolean", Path: "path"}
    if tp in names:
        return names[tp]
    return getattr(tp, "__name__", str(tp))


def _default(field: attrs.Attribute[Any]) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        # Only plain containers are shown: another factory may read the environment (a plugin's URL
        # from $OLLAMA_URL), and the page must not depend on where it was generated.
        factory: Any = default
        if factory.takes_self:
            return ""
        default = factory.factory()
        if not isinstance(default, list | dict) or any(attrs.has(type(v)) for v in default):
            return ""
    if default is None:
        return ""
    if attrs.has(type(default)):
        return ""
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, int) and default >= 1024 * 1024 and default % (1024 * 1024) == 0:
        return f"{default // (1024 * 1024)} MiB"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, str):
        return f"`{default}`"
    if isinstance(default, list | dict) and not default:
        return f"`{default!r}`".replace("'", "")
    if isinstance(default, dict):
        return ", ".join(f"`{k}` → {v}" for k, v in default.items())
    return f"`{default!r}`"


def _table(cls: type) -> list[str]:
    _, docs = field_docs(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in attrs.fields(cls):
        rows.append(f"| `{field.name}` | {_type_name(hints[field.name])} | {_default(field)} | "
                    f"{_markdown(docs[field.name], cell=True)} |")
    return rows


def _section(level: str, heading: str, where: str, cls: type, lead: str = "") -> list[str]:
    prose, _ = field_docs(cls)
    out = [f"{level} {heading}", ""]
    if where:
        out += ["At " + ", ".join(f"`{w.strip()}`" for w in where.split(",")) + ".", ""]
    for text in (lead, prose):
        if text:
            out += [_markdown(text), ""]
    return [*out, *_table(cls), ""]


def configuration_md(plugins: Iterable[str] | None = None) -> str:
    """The page: the core's schema, then each plugin's config (every installed one that loads, or
    the provider types named in ``plugins``)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m stackd.reference configuration` (tox -e docs) from the docstrings of",
        "     the schema classes: edit those, then regenerate. tests/test_docs.py fails when this is stale. -->",
        "",
    ]
    for heading, where, cls in CORE_SECTIONS:
        lines += _section("##", heading, where, cls)
    lines += ["## Environment substitution", "", _markdown(inspect.getdoc(envsubst) or "").strip(), ""]
    catalog = Catalog.from_entry_points(only=plugins)
    lines += ["## Provider plugins", "",
              "Each plugin checks its own `config:` mapping (at `providers.<api>[i].config`). "
              "`stackd providers` lists the installed ones; what each talks to and how it fails is in "
              "docs/providers.md.", ""]
    for provider_type in sorted(catalog.plugins):
        plugin = catalog.plugins[provider_type]
        try:
            spec = plugin.load()
        except PluginLoadError:
            if plugins is not None:
                raise
            continue
        lines += _section("###", f"`{provider_type}` ({plugin.distribution})", "", spec.config_class,
                          lead=spec.description)
        for nested in _nested_classes(spec.config_class):
            lines += _section("####", f"`{provider_type}`: `{nested.__name__}`", "", nested)
    return "\n".join(lines).rstrip() + "\n"


def _nested_classes(cls: type) -> list[type]:
    """attrs classes a plugin config holds (llama-cpp's list of models), documented after it."""
    found: list[type] = []
    for tp in typing.get_type_hints(cls, include_extras=True).values():
        stack = [tp]
        while stack:
            t = stack.pop()
            own = isinstance(t, type) and t.__module__.split(".")[0] == cls.__module__.split(".")[0]
            if own and attrs.has(t) and t not in found and t is not cls:
                found.append(t)
            stack += list(typing.get_args(t))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stackd.reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", choices=["configuration"])
    parser.add_argument("--plugin", action="append", metavar="PROVIDER_TYPE",
                        help="document these provider types only (default: every installed plugin that loads)")
    parser.add_argument("--output", type=Path, help="write the page here (default: standard output)")
    args = parser.parse_args(argv)
    try:
        page = configuration_md(args.plugin)
    except (UndocumentedField, PluginLoadError) as exc:
        print(f"stackd.reference: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
