"""Config of ``server.auth`` (API.md §4): a tagged union on ``provider_type``.

The types only; what they do lives in :mod:`stackd.auth`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import attrs

from stackd.convert import Check, HttpUrl, Seconds, Secret, Tagged

__all__ = [
    "DEFAULT_CLAIMS_MAPPING",
    "AuthConfig",
    "CustomAuth",
    "CustomAuthConfig",
    "JwksConfig",
    "OAuth2TokenAuth",
    "OAuth2TokenConfig",
    "RoutePolicyRule",
]

# Llama Stack 0.2.12's default: claim -> attribute category.
DEFAULT_CLAIMS_MAPPING: dict[str, str] = {
    "sub": "roles",
    "username": "roles",
    "groups": "teams",
    "team": "teams",
    "project": "projects",
    "tenant": "namespaces",
    "namespace": "namespaces",
}

PublicPath = Annotated[str, Check(lambda p: p.startswith("/"), "a path starting with '/'")]
Leeway = Annotated[float, Check(lambda s: 0 <= s <= 600, "a number of seconds from 0 to 600")]


@attrs.frozen
class RoutePolicyRule:
    routes: list[str]
    allow: dict[str, list[str]] = attrs.field(factory=dict)


@attrs.frozen
class JwksConfig:
    uri: HttpUrl
    token: Secret | None = None
    key_recheck_period: Seconds = Seconds(3600.0)  # noqa: RUF009 - NewType: no call at run time
    # An unknown kid fetches the key set again at once, but not more often than this: a flood of
    # tokens with made-up kids must not become a flood of requests to the identity provider.
    min_refetch_interval: Seconds = Seconds(5.0)  # noqa: RUF009


@attrs.frozen
class OAuth2TokenConfig:
    jwks: JwksConfig
    issuer: str | None = None
    audience: str | None = None
    tls_cafile: Path | None = None
    verify_tls: bool = True
    claims_mapping: dict[str, str] = attrs.field(factory=lambda: dict(DEFAULT_CLAIMS_MAPPING))
    leeway: Leeway = 30.0
    timeout: Seconds = Seconds(10.0)  # noqa: RUF009
    max_cached_tokens: int = 10000


@attrs.frozen
class CustomAuthConfig:
    endpoint: HttpUrl
    timeout: Seconds = Seconds(10.0)  # noqa: RUF009
    cache_ttl: Seconds = Seconds(10.0)  # noqa: RUF009
    failure_cache_ttl: Seconds = Seconds(1.0)  # noqa: RUF009
    max_cached_tokens: int = 10000
    tls_cafile: Path | None = None
    verify_tls: bool = True


@attrs.frozen
class OAuth2TokenAuth:
    config: OAuth2TokenConfig
    provider_type: Literal["oauth2_token"] = "oauth2_token"
    route_policy: list[RoutePolicyRule] = attrs.field(factory=list)
    public_paths: list[PublicPath] = attrs.field(factory=list)


@attrs.frozen
class CustomAuth:
    config: CustomAuthConfig
    provider_type: Literal["custom"] = "custom"
    route_policy: list[RoutePolicyRule] = attrs.field(factory=list)
    public_paths: list[PublicPath] = attrs.field(factory=list)


AuthConfig = Annotated[OAuth2TokenAuth | CustomAuth, Tagged("provider_type", "auth provider")]
