"""Who is calling: what authentication finds out, and what access checks, quota and providers read.

A leaf module: the coming ``stackd.auth``, the registry, the admission gate and the providers all
import it, and it imports nothing of stackd.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["ANONYMOUS", "Caller"]


@attrs.frozen
class Caller:
    """The authenticated principal (``None`` when anonymous) and its access attributes
    (``roles``, ``teams``, ``projects``, ``namespaces`` -> values)."""

    principal: str | None = None
    attributes: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)
    client_address: str | None = None

    @property
    def authenticated(self) -> bool:
        return self.principal is not None


ANONYMOUS = Caller()
