"""What a provider plugin declares: :class:`ProviderSpec`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

__all__ = ["PLUGIN_CONTRACT", "ProviderSpec"]

#: The version of the plugin contract this stackd implements: what a ``ProviderSpec`` holds, how the
#: factory is called and which provider methods the core calls (docs/plugins.md). It changes only when
#: a plugin written for the previous one could break; a plugin states the one it was written for in
#: ``ProviderSpec.contract`` and is refused at load when it differs.
PLUGIN_CONTRACT = 1


@attrs.frozen
class ProviderSpec:
    """One provider of one API, as a plugin declares it in the ``stackd.providers`` entry-point group.

    ``factory(config, deps)`` is awaited once at start with the structured ``config_class``
    instance and a mapping ``{api: router}`` holding exactly the APIs named in ``requires``.
    It returns the provider object. If that object has ``async close()``, it is awaited on
    shutdown, in reverse build order.

    ``contract`` is the plugin contract the plugin was written for (:data:`PLUGIN_CONTRACT` of the
    stackd it was built against); a stackd of another contract refuses the plugin when it loads.
    """

    api: str
    provider_type: str
    config_class: type
    factory: Callable[[Any, Mapping[str, Any]], Awaitable[Any]]
    requires: tuple[str, ...] = ()
    description: str = ""
    contract: int = attrs.field(kw_only=True, default=0)
    """0: a plugin whose spec names no contract (made before contracts existed); refused with that reason."""

    def __attrs_post_init__(self) -> None:
        if "::" not in self.provider_type:
            raise ValueError(
                f"provider_type {self.provider_type!r} must read 'remote::name' or 'inline::name'"
            )
        if not attrs.has(self.config_class):
            raise TypeError(f"config_class of {self.provider_type} must be an attrs class")
