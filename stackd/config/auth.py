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
    """What a rule applies to; a missing part matches anything.

    - ``actions``: ``create``, ``read``, ``update``, ``delete``; one or a list
    - ``principal``: the caller, exactly
    - ``resource``: ``model::<id>``, ``shield::<id>``, ``chat_completion::<id>``, or ``<kind>::*``
    """

    actions: Actions
    principal: str | None = None
    resource: ResourcePattern | None = None


@attrs.frozen
class AccessRule:
    """One rule of ``server.auth.access_policy`` (Llama Stack 0.2.12's rules): exactly one of ``permit``
    / ``forbid``, and at most one of ``when`` / ``unless`` (a list means all of them). Rules are tried in
    order; the first whose scope and condition match decides; when none matches, the answer is no.
    With no rules a caller uses what its owner's attributes allow (docs/auth.md). A rule that does not
    parse is an error at its path.

    - ``permit``: the scope this rule allows
    - ``forbid``: the scope this rule refuses
    - ``when``: the rule applies if these conditions all hold: ``user with <value> in <category>``,
      ``user with <value> not in <category>``, ``user is owner``, ``user is not owner``, ``user in owners
      <category>``, ``user not in owners <category>``, ``resource is unowned``
    - ``unless``: the rule applies if these conditions do not all hold
    - ``description``: free text
    """

    permit: AccessScope | None = None
    forbid: AccessScope | None = None
    when: Conditions | None = None
    unless: Conditions | None = None
    description: str | None = None


@attrs.frozen
class RoutePolicyRule:
    """A route rule: the first rule naming the request's path decides; once any rule exists, a path no
    rule names is 403 (health and version stay public). A route that names nothing stackd serves is a
    config warning.

    - ``routes``: exact paths, or prefixes when they end in ``/`` (``["/v1/models", "/v1/inference/"]``)
    - ``allow``: ``{category: [values]}``: a caller with one listed value of one listed category passes;
      a rule without ``allow`` admits anyone; 403 otherwise
    """

    routes: list[str]
    allow: dict[str, list[str]] = attrs.field(factory=dict)


@attrs.frozen
class JwksConfig:
    """The key set that verifies the tokens' signatures.

    - ``uri``: https URL of the key set (Kubernetes: ``https://kubernetes.default.svc/openid/v1/jwks``)
    - ``token``: bearer token sent when fetching the key set (a service-account token); never shown or
      logged
    - ``key_recheck_period``: seconds the key set is kept before it is fetched again (in the background:
      requests go on with the keys at hand); if that fetch fails the old keys stay in use, with a warning
    - ``min_refetch_interval``: a token naming an unknown ``kid`` fetches the key set again at once, but
      not more often than this (seconds); concurrent requests share one fetch
    """

    uri: HttpUrl
    token: Secret | None = None
    key_recheck_period: Seconds = Seconds(3600.0)  # noqa: RUF009 - NewType: no call at run time
    # An unknown kid fetches the key set again at once, but not more often than this: a flood of
    # tokens with made-up kids must not become a flood of requests to the identity provider.
    min_refetch_interval: Seconds = Seconds(5.0)  # noqa: RUF009


@attrs.frozen
class IntrospectionConfig:
    """RFC 7662 token introspection, instead of a JWKS (Llama Stack 0.2.12's fields): for opaque tokens.
    An endpoint that cannot be reached or answers without ``active`` is 503.

    - ``url``: the endpoint; stackd POSTs ``token=<token>``
    - ``client_id``, ``client_secret``: stackd's client credentials there, sent as HTTP Basic (the secret
      is never shown or logged)
    - ``send_secret_in_body``: send ``client_id`` and ``client_secret`` in the form body instead
    - ``cache_ttl``: seconds an active answer is reused (never past the token's ``exp``); an inactive one
      1 s
    """

    url: HttpUrl
    client_id: str
    client_secret: Secret
    send_secret_in_body: bool = False
    # An active answer without exp is trusted this long; one with exp never past it.
    cache_ttl: Seconds = Seconds(60.0)  # noqa: RUF009 - NewType: no call at run time


@attrs.frozen
class OAuth2TokenConfig:
    """JWTs checked against a JWKS, or opaque tokens asked of an introspection endpoint.

    - ``jwks``: the key set (section above); exactly one of ``jwks`` and ``introspection``
    - ``introspection``: ask an RFC 7662 endpoint instead of checking JWTs (section above)
    - ``issuer``: required ``iss`` of every token
    - ``audience``: required in every token's ``aud`` (a string or a list holding it)
    - ``tls_cafile``: CA bundle that verifies the JWKS or introspection server (Kubernetes: the cluster
      CA); an unreadable file is a config error
    - ``verify_tls``: ``false`` fetches keys without checking the certificate: warned at start, never use
      it in production
    - ``claims_mapping``: claim -> attribute category; a claim may be a dotted path into nested claims
      (``resource_access.stackd.roles``); list claims are taken as they are, strings split on spaces
    - ``leeway``: seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat`` (0 to 600)
    - ``timeout``: seconds for one JWKS fetch; past it the request is 503
    - ``max_cached_tokens``: verified tokens remembered (by hash, until their ``exp``) so a hot client
      pays no signature check
    """

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
    """Your endpoint decides (the contract is in docs/auth.md).

    - ``endpoint``: http(s) URL stackd POSTs each new token to
    - ``timeout``: seconds for one call; past it (or with the endpoint unreachable) the request is 503
    - ``cache_ttl``: seconds a positive decision is reused for the same token (never past a JWT token's
      ``exp``)
    - ``failure_cache_ttl``: seconds a refusal is reused for the same token
    - ``max_cached_tokens``: decisions remembered (by token hash)
    - ``tls_cafile``: CA bundle that verifies an https endpoint
    - ``verify_tls``: ``false`` skips checking the endpoint's certificate: warned at start
    """

    endpoint: HttpUrl
    timeout: Seconds = Seconds(10.0)  # noqa: RUF009
    cache_ttl: Seconds = Seconds(10.0)  # noqa: RUF009
    failure_cache_ttl: Seconds = Seconds(1.0)  # noqa: RUF009
    max_cached_tokens: int = 10000
    tls_cafile: Path | None = None
    verify_tls: bool = True


@attrs.frozen
class OAuth2TokenAuth:
    """Authentication by bearer token: a JWT checked against a JWKS, or an opaque token introspected.
    A request without a valid token is 401 with ``WWW-Authenticate: Bearer``. Health and version stay
    public.

    - ``provider_type``: ``oauth2_token``
    - ``config``: the settings of the check (section below)
    - ``route_policy``: route rules (section below): ``[{routes: [...], allow: {roles: [admin]}}]``
    - ``access_policy``: who may create, read, update and delete which model, shield and stored chat
      completion (section below)
    - ``public_paths``: more exact paths served without a token (``/v1/health`` and ``/v1/version``
      always are)
    """

    config: OAuth2TokenConfig
    provider_type: Literal["oauth2_token"] = "oauth2_token"
    route_policy: list[RoutePolicyRule] = attrs.field(factory=list)
    access_policy: list[AccessRule] = attrs.field(factory=list)
    public_paths: list[PublicPath] = attrs.field(factory=list)


@attrs.frozen
class CustomAuth:
    """Authentication by an endpoint of yours, which is given each new token and decides.

    - ``provider_type``: ``custom``
    - ``config``: the endpoint and its caching (section below)
    - ``route_policy``: route rules (section below): ``[{routes: [...], allow: {roles: [admin]}}]``
    - ``access_policy``: who may create, read, update and delete which model, shield and stored chat
      completion (section below)
    - ``public_paths``: more exact paths served without a token (``/v1/health`` and ``/v1/version``
      always are)
    """

    config: CustomAuthConfig
    provider_type: Literal["custom"] = "custom"
    route_policy: list[RoutePolicyRule] = attrs.field(factory=list)
    access_policy: list[AccessRule] = attrs.field(factory=list)
    public_paths: list[PublicPath] = attrs.field(factory=list)


AuthConfig = Annotated[OAuth2TokenAuth | CustomAuth, Tagged("provider_type", "auth provider")]
