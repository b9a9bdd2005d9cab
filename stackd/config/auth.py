"""Config of ``server.auth`` (API.md §4): a tagged union on ``provider_type``.

The types only; what they do lives in :mod:`stackd.auth`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import attrs
import cattrs

from stackd.convert import Check, Hook, HttpUrl, Seconds, Secret, Tagged

__all__ = [
    "AccessRule",
    "AccessScope",
    "Condition",
    "parse_condition",
    "DEFAULT_CLAIMS_MAPPING",
    "IntrospectionConfig",
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


Action = Literal["create", "read", "update", "delete"]
_CONDITION_FORMS = ("user with <value> in <category>", "user with <value> not in <category>", "user is owner",
                    "user is not owner", "user in owners <category>", "user not in owners <category>",
                    "resource is unowned")


def parse_condition(text: str) -> tuple[str, ...] | None:
    """A condition of Llama Stack 0.2.12's rule language as ``(form, args...)``, or None."""
    words = text.split()
    match words:
        case ["user", "with", value, "in", category]:
            return ("with_in", value, category)
        case ["user", "with", value, "not", "in", category]:
            return ("with_not_in", value, category)
        case ["user", "is", "owner"]:
            return ("is_owner",)
        case ["user", "is", "not", "owner"]:
            return ("is_not_owner",)
        case ["user", "in", "owners", category]:
            return ("in_owners", category)
        case ["user", "not", "in", "owners", category]:
            return ("not_in_owners", category)
        case ["resource", "is", "unowned"]:
            return ("unowned",)
    return None


Condition = Annotated[str, Check(lambda c: parse_condition(c) is not None, "a condition: " + "; ".join(
    repr(f) for f in _CONDITION_FORMS))]
ResourcePattern = Annotated[str, Check(
    lambda r: r.count("::") == 1 and all(r.split("::")), "a resource as 'kind::id' or 'kind::*' (model::*, "
    "shield::llama-guard, chat_completion::*)")]


def _one_or_list(item: Any) -> Callable[[cattrs.Converter], Callable[[Any, Any], Any]]:
    """Llama Stack writes ``actions: read`` and ``actions: [read]``, ``when: "..."`` and
    ``when: ["...", "..."]``: one value stands for a list of one."""

    def factory(conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
        def hook(value: Any, _: Any) -> Any:
            return conv.structure([value] if isinstance(value, str) else value, list[item])

        return hook

    return factory


Actions = Annotated[list[Action], Hook(_one_or_list(Action))]
Conditions = Annotated[list[Condition], Hook(_one_or_list(Condition))]


@attrs.frozen
class AccessScope:
    actions: Actions
    principal: str | None = None
    resource: ResourcePattern | None = None


@attrs.frozen
class AccessRule:
    """One rule of ``server.auth.access_policy``: exactly one of ``permit`` / ``forbid``, and at
    most one of ``when`` / ``unless`` (a list means all of them)."""

    permit: AccessScope | None = None
    forbid: AccessScope | None = None
    when: Conditions | None = None
    unless: Conditions | None = None
    description: str | None = None


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
class IntrospectionConfig:
    """RFC 7662 token introspection, instead of a JWKS (Llama Stack 0.2.12's fields)."""

    url: HttpUrl
    client_id: str
    client_secret: Secret
    send_secret_in_body: bool = False
    # An active answer without exp is trusted this long; one with exp never past it.
    cache_ttl: Seconds = Seconds(60.0)  # noqa: RUF009 - NewType: no call at run time


@attrs.frozen
class OAuth2TokenConfig:
    jwks: JwksConfig | None = None
    introspection: IntrospectionConfig | None = None
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
    access_policy: list[AccessRule] = attrs.field(factory=list)
    public_paths: list[PublicPath] = attrs.field(factory=list)


@attrs.frozen
class CustomAuth:
    config: CustomAuthConfig
    provider_type: Literal["custom"] = "custom"
    route_policy: list[RoutePolicyRule] = attrs.field(factory=list)
    access_policy: list[AccessRule] = attrs.field(factory=list)
    public_paths: list[PublicPath] = attrs.field(factory=list)


AuthConfig = Annotated[OAuth2TokenAuth | CustomAuth, Tagged("provider_type", "auth provider")]
