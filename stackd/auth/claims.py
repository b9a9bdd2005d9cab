"""Claims (of a JWT or an introspection answer) -> a :class:`Caller`, by ``claims_mapping``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackd.caller import Caller

__all__ = ["caller_from_claims", "claim_at"]

_MISSING = object()


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim named ``path``: the key as written if present, else a dotted path into nested
    claims (``resource_access.stackd.roles``, the Keycloak layout)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _values(value: Any) -> list[str]:
    # Llama Stack's reading: a list as is, a string split on spaces (an OAuth "scope").
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int)) and not isinstance(v, bool)]
    if isinstance(value, str):
        return value.split()
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    return []


def caller_from_claims(
    principal: str, claims: Mapping[str, Any], mapping: Mapping[str, str], client_address: str | None
) -> Caller:
    attributes: dict[str, list[str]] = {}
    for claim, category in mapping.items():
        value = claim_at(claims, claim)
        if value is _MISSING:
            continue
        bucket = attributes.setdefault(category, [])
        bucket.extend(v for v in _values(value) if v not in bucket)
    return Caller(
        principal=principal,
        attributes={k: tuple(v) for k, v in attributes.items() if v},
        client_address=client_address,
    )
