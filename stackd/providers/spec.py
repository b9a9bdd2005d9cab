"""What a provider plugin declares: :class:`ProviderSpec`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

__all__ = ["ProviderSpec"]


@attrs.frozen
class ProviderSpec:
    """One provider of one API, as a plugin declares it in the ``stackd.providers`` entry-point group.

    ``factory(config, deps)`` is awaited once at start with the structured ``config_class``
    instance and a mapping ``{api: router}`` holding exactly the APIs named in ``requires``.
    It returns the provider object. If that object has ``async close()``, it is awaited on
    shutdown, in reverse build order.
    """

    api: str
    provider_type: str
    config_class: type
    factory: Callable[[Any, Mapping[str, Any]], Awaitable[Any]]
    requires: tuple[str, ...] = ()
    description: str = ""

    def __attrs_post_init__(self) -> None:
        if "::" not in self.provider_type:
            raise ValueError(
                f"provider_type {self.provider_type!r} must read 'remote::name' or 'inline::name'"
            )
        if not attrs.has(self.config_class):
            raise TypeError(f"config_class of {self.provider_type} must be an attrs class")
