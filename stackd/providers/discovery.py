"""Finding provider plugins through the ``stackd.providers`` entry-point group.

Entry points are listed without importing anything; a plugin is imported only when a config
uses its provider type, so one broken plugin breaks only the configs that name it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib.metadata import Distribution, EntryPoint, entry_points

import attrs
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import stackd
from stackd.apis.known import PROVIDER_APIS
from stackd.providers.spec import PLUGIN_CONTRACT, ProviderSpec

__all__ = ["GROUP", "Catalog", "InstalledPlugin", "PluginLoadError", "core_requirement", "package_hint"]

GROUP = "stackd.providers"


class PluginLoadError(Exception):
    """A plugin could not be imported or did not declare a valid ProviderSpec."""


def package_hint(provider_type: str) -> str:
    """What to ``pip install`` for ``provider_type``, by stackd's naming convention: the
    distribution ``stackd-provider-NAME`` for ``remote::NAME`` / ``inline::NAME``, so that a new
    plugin needs no change in the core."""
    return "stackd-provider-" + provider_type.split("::", 1)[-1].replace("_", "-").lower()


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
        # Checked before the import: a plugin made for another stackd may not even import with this one.
        wanted = core_requirement(self.entry_point.dist)
        if wanted is not None and canonicalize_name(wanted.name) != stackd.DISTRIBUTION:
            raise PluginLoadError(
                f"plugin {where} requires '{wanted}', but the distribution {wanted.name!r} on PyPI is an "
                f"unrelated project: stackd's core is the distribution {stackd.DISTRIBUTION}. Change the plugin's "
                f"dependency to '{stackd.DISTRIBUTION}{wanted.specifier}' and reinstall it; if pip installed that "
                f"project (pip show {wanted.name}), pip uninstall {wanted.name} and then "
                f"pip install --force-reinstall '{stackd.DISTRIBUTION}=={stackd.__version__}'"
            )
        if wanted is not None and not wanted.specifier.contains(stackd.__version__, prereleases=True):
            raise PluginLoadError(
                f"plugin {where} works with {wanted} and this is stackd {stackd.__version__}: install the "
                f"{self.distribution} made for this stackd (pip install '{self.distribution}' "
                f"'{stackd.DISTRIBUTION}=={stackd.__version__}') or the stackd it asks for (pip install '{wanted}')"
            )
        try:
            obj = self.entry_point.load()
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {where} failed to import: {type(exc).__name__}: {exc}; "
                f"reinstall it (pip install --force-reinstall {self.distribution}) or remove it"
            ) from exc
        if not isinstance(obj, ProviderSpec):
            raise PluginLoadError(f"plugin {where} does not point at a stackd.ProviderSpec (got {type(obj).__name__})")
        if obj.contract != PLUGIN_CONTRACT:
            newer = "a newer" if obj.contract > PLUGIN_CONTRACT else "an older"
            written = (f"plugin contract {obj.contract}" if obj.contract else
                       "no plugin contract (its ProviderSpec has no contract=: made before stackd had contracts)")
            raise PluginLoadError(
                f"plugin {where} was written for {written} and stackd {stackd.__version__} "
                f"implements plugin contract {PLUGIN_CONTRACT}: install a release of {self.distribution} made for "
                f"plugin contract {PLUGIN_CONTRACT}, or {newer} stackd"
            )
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


# The PyPI name the core never had (an unrelated project owns it). A plugin that requires it was
# written for a pre-release checkout of stackd: pip installs that stranger's ``stackd`` beside it.
_FOREIGN_CORE = "stackd"


def core_requirement(dist: Distribution | None) -> Requirement | None:
    """The core requirement a plugin's distribution declares (``stackd-server>=0.1,<0.2``), if any;
    also one on the old name ``stackd``, which the caller refuses.

    pip honours it at install time; it is checked again at load because ``pip install --no-deps``,
    an editable checkout or a later ``pip install stackd-server==...`` can leave an unmatched pair."""
    for line in (dist.requires or []) if dist is not None else []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) in (stackd.DISTRIBUTION, _FOREIGN_CORE) and (
            req.marker is None or req.marker.evaluate({"extra": ""})
        ):
            return req
    return None


def _env_filter() -> set[str] | None:
    raw = os.environ.get("STACKD_PLUGINS")
    if not raw:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}
