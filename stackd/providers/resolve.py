"""The plugin-config pass: each enabled provider entry of a run config, resolved to its plugin.

For every :class:`~stackd.config.loader.ProviderAt` the plugin is found in the catalog, its
API checked, its ``config:`` structured into the plugin's attrs class with the same converter
and the same error paths as the rest of the file, and the providers put in dependency order.
Problems go to the config's report, so a user sees them with the file's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from stackd.config.loader import ProviderAt
from stackd.config.problems import Report
from stackd.convert import converter, field_errors, unknown_keys
from stackd.providers.discovery import Catalog, PluginLoadError, package_hint
from stackd.providers.spec import ProviderSpec

__all__ = ["DependencyError", "Resolution", "ResolvedProvider", "build_order", "resolve_providers"]


@attrs.frozen
class ResolvedProvider:
    api: str
    provider_id: str
    provider_type: str
    spec: ProviderSpec
    config: Any
    distribution: str = "(in-process)"
    """``name version`` of the distribution that declares the plugin, for messages."""


@attrs.frozen
class Resolution:
    providers: dict[str, ResolvedProvider]
    missing_apis: dict[str, str]
    """API -> why it is not served (only with ``skip_missing_apis``)."""
    skipped: dict[str, str]
    """provider_id -> why it will not run (its plugin is not installed or does not load)."""


class DependencyError(Exception):
    """A provider needs an API nobody serves, or providers need each other in a cycle."""


def resolve_providers(
    entries: Sequence[ProviderAt], catalog: Catalog, report: Report, *, skip_missing_apis: bool = False
) -> Resolution:
    providers: dict[str, ResolvedProvider] = {}
    missing: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for at in entries:
        entry, path = at.entry, at.path
        try:
            spec = catalog.get(entry.provider_type)
        except (KeyError, PluginLoadError) as exc:
            message = str(exc.args[0]) if isinstance(exc, KeyError) else str(exc)
            if not skip_missing_apis:
                report.error(f"{path}.provider_type", message)
                continue
            installed = isinstance(exc, PluginLoadError)
            why = str(exc) if installed else (f"{entry.provider_type} is not installed "
                                               f"(pip install {package_hint(entry.provider_type)})")
            missing.setdefault(at.api, why)
            skipped[at.provider_id] = "does not load" if installed else "is not installed"
            report.warn(f"{path}.provider_type", message)
            continue
        if spec.api != at.api:
            report.error(f"{path}.provider_type", f"{entry.provider_type!r} serves the {spec.api!r} API, "
                         f"not {at.api!r}; move it under providers.{spec.api}")
            continue
        for unknown in unknown_keys(entry.config, spec.config_class, f"{path}.config"):
            report.warn(unknown, f"unknown key {unknown.rsplit('.', 1)[-1]!r} for {entry.provider_type}; "
                        "it is ignored")
        try:
            config: Any = converter.structure(entry.config, spec.config_class)
        except Exception as exc:  # noqa: BLE001 - every structuring failure becomes a Problem
            report.field_errors(field_errors(exc, f"{path}.config"))
            continue
        if at.provider_id in providers:
            report.error(f"{path}.provider_id", f"provider_id {at.provider_id!r} is also used by the "
                         f"{providers[at.provider_id].api} API; give each served provider its own id")
            continue
        providers[at.provider_id] = ResolvedProvider(
            at.api, at.provider_id, entry.provider_type, spec, config,
            catalog.distribution_of(entry.provider_type),
        )
    try:
        build_order(providers)
    except DependencyError as exc:
        report.error("$.providers", str(exc))
    return Resolution(providers, missing, skipped)


def build_order(providers: Mapping[str, ResolvedProvider]) -> list[ResolvedProvider]:
    """Providers sorted so that every provider comes after those serving the APIs it requires."""
    by_api: dict[str, list[ResolvedProvider]] = {}
    for p in providers.values():
        by_api.setdefault(p.api, []).append(p)
    problems: list[str] = []
    for p in providers.values():
        for api in p.spec.requires:
            if api not in by_api:
                problems.append(
                    f"provider {p.provider_id!r} ({p.provider_type}) requires the {api!r} API; "
                    f"add a provider under providers.{api} and list {api!r} in apis"
                )
    if problems:
        raise DependencyError("; ".join(problems))

    order: list[ResolvedProvider] = []
    state: dict[str, str] = {}  # api -> "visiting" | "done"

    def visit(api: str, trail: list[str]) -> None:
        if state.get(api) == "done":
            return
        if state.get(api) == "visiting":
            cycle = " -> ".join([*trail[trail.index(api):], api])
            raise DependencyError(f"providers depend on each other in a cycle: {cycle}")
        state[api] = "visiting"
        for p in by_api[api]:
            for dep in p.spec.requires:
                visit(dep, [*trail, api])
        state[api] = "done"
        order.extend(by_api[api])

    for api in sorted(by_api):
        visit(api, [])
    return order
