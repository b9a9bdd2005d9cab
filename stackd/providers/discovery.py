"""Finding provider plugins through the ``stackd.providers`` entry-point group.

Entry points are listed without importing anything; a plugin is imported only when a config
uses its provider type, so one broken plugin breaks only the configs that name it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import attrs

from stackd.apis.known import PROVIDER_APIS
from stackd.providers.spec import ProviderSpec

__all__ = ["GROUP", "Catalog", "InstalledPlugin", "PluginLoadError", "package_hint"]

GROUP = "stackd.providers"


class PluginLoadError(Exception):
    """A plugin could not be imported or did not declare a valid ProviderSpec."""


def package_hint(provider_type: str, *, near: Path | None = None) -> str:
    """What to ``pip install`` for ``provider_type``, by stackd's naming convention: the
    distribution ``stackd-provider-NAME`` for ``remote::NAME`` / ``inline::NAME``. When that
    distribution's source sits in ``plugins/`` of the folder stackd runs in (``near``, the
    working directory by default: a stackd checkout), the hint points there, since a plugin of
    the repository works before it is published."""
    name = "stackd-provider-" + provider_type.split("::", 1)[-1].replace("_", "-")
    local = (near or Path.cwd()) / "plugins" / name
    if (local / "pyproject.toml").is_file():
        return f"./plugins/{name}"
    return name


@attrs.define
class InstalledPlugin:
    provider_type: str
    entry_point: EntryPoint | None
    distribution: str
    version: str
    _spec: ProviderSpec | None = None

    def load(self) -> ProviderSpec:
        if self._spec is not None:
            return self._spec
        assert self.entry_point is not None
        where = f"{self.distribution} {self.version} (entry point {self.entry_point.value!r})"
        try:
            obj = self.entry_point.load()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {where} failed to import: {type(exc).__name__}: {exc}; "
                f"reinstall it (pip install --force-reinstall {self.distribution}) or remove it"
            ) from exc
        if not isinstance(obj, ProviderSpec):
            raise PluginLoadError(f"plugin {where} does not point at a stackd.ProviderSpec (got {type(obj).__name__})")
        if obj.api not in PROVIDER_APIS:
            raise PluginLoadError(
                f"plugin {where} serves the {obj.api!r} API, which this stackd does not know "
                f"(known: {', '.join(PROVIDER_APIS)}); it may need a newer stackd"
            )
        if obj.provider_type != self.provider_type:
            raise PluginLoadError(
                f"plugin {where} is registered as {self.provider_type!r} but its spec says {obj.provider_type!r}"
            )
        self._spec = obj
        return obj


@attrs.define
class Catalog:
    """The installed provider types. Build it from entry points, or from specs in tests."""

    plugins: dict[str, InstalledPlugin] = attrs.field(factory=dict)

    @classmethod
    def from_entry_points(cls, only: Iterable[str] | None = None) -> Catalog:
        """All plugins of the group; ``STACKD_PLUGINS=a,b`` (or ``only``) restricts the set."""
        wanted = set(only) if only is not None else _env_filter()
        plugins: dict[str, InstalledPlugin] = {}
        for ep in entry_points(group=GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            dist = ep.dist
            plugins[ep.name] = InstalledPlugin(
                provider_type=ep.name,
                entry_point=ep,
                distribution=dist.metadata["Name"] if dist else "(unknown distribution)",
                version=dist.version if dist else "?",
            )
        return cls(plugins)

    @classmethod
    def from_specs(cls, specs: Iterable[ProviderSpec], distribution: str = "(in-process)") -> Catalog:
        return cls(
            {
                spec.provider_type: InstalledPlugin(spec.provider_type, None, distribution, "", spec)
                for spec in specs
            }
        )

    def get(self, provider_type: str) -> ProviderSpec:
        """The spec for ``provider_type``; ``KeyError`` with a helpful message if not installed."""
        plugin = self.plugins.get(provider_type)
        if plugin is None:
            raise KeyError(self.unknown_message(provider_type))
        return plugin.load()

    def distribution_of(self, provider_type: str) -> str:
        """``name version`` of the distribution that declares ``provider_type``."""
        plugin = self.plugins[provider_type]
        return f"{plugin.distribution} {plugin.version}".strip()

    def unknown_message(self, provider_type: str) -> str:
        installed = ", ".join(sorted(self.plugins)) or "none"
        return (
            f"unknown provider_type {provider_type!r}: install the plugin that provides it "
            f"(pip install {package_hint(provider_type)}); installed provider types: {installed}"
        )


def _env_filter() -> set[str] | None:
    raw = os.environ.get("STACKD_PLUGINS")
    if not raw:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}
