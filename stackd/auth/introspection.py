"""``oauth2_token`` with ``introspection``: an RFC 7662 endpoint says whether a token is active.

For identity providers whose tokens are opaque (not JWTs). The client credentials go as HTTP
Basic, or in the form body with ``send_secret_in_body`` (Llama Stack 0.2.12's fields). An
active answer is cached by token hash until its ``exp`` (at most ``cache_ttl``); an inactive
one is 401; an endpoint that cannot be reached or answers garbage is 503.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import attrs
import orjson

from stackd import metrics
from stackd.auth.bearer import AuthRequest, DecisionCache, Refusal, RemoteDecisions
from stackd.auth.claims import caller_from_claims
from stackd.caller import Caller
from stackd.config.auth import IntrospectionConfig, OAuth2TokenConfig
from stackd.errors import UpstreamUnavailable
from stackd.upstream import make_session

__all__ = ["IntrospectionAuthenticator"]

log = logging.getLogger("stackd.auth")

_MAX_ANSWER_BYTES = 256 * 1024


@attrs.define
class IntrospectionAuthenticator:
    config: OAuth2TokenConfig
    _session: aiohttp.ClientSession | None = None
    _decisions: RemoteDecisions = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._decisions = RemoteDecisions(DecisionCache(self.config.max_cached_tokens, "introspection"))

    @property
    def _endpoint(self) -> IntrospectionConfig:
        assert self.config.introspection is not None
        return self.config.introspection

    async def open(self) -> None:
        cfg = self.config
        tls: bool | Any = cfg.tls_cafile if cfg.tls_cafile is not None else cfg.verify_tls
        self._session = make_session(timeout=float(cfg.timeout), total_timeout=float(cfg.timeout),
                                     tls_verify=tls, headers={"Accept": "application/json"}, limit=16,
                                     provider_id="server.auth")

    async def close(self) -> None:
        await self._decisions.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def authenticate(self, request: AuthRequest) -> Caller:
        return await self._decisions.caller(request, self._ask)

    async def _ask(self, token: str) -> tuple[Caller | Refusal, float]:
        endpoint = self._endpoint
        form = {"token": token, "token_type_hint": "access_token"}
        headers = {}
        if endpoint.send_secret_in_body:
            form |= {"client_id": endpoint.client_id, "client_secret": endpoint.client_secret.reveal()}
        else:
            # RFC 6749 §2.3.1: each part form-encoded, then HTTP Basic.
            pair = f"{quote(endpoint.client_id, safe='')}:{quote(endpoint.client_secret.reveal(), safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        assert self._session is not None, "open() the authenticator first"
        try:
            async with self._session.post(endpoint.url, data=form, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                raw = await resp.content.read(_MAX_ANSWER_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("server.auth: the introspection endpoint %s cannot be reached: %s", endpoint.url,
                        type(exc).__name__)
            metrics.auth_fetch("introspection", ok=False)
            raise UpstreamUnavailable("the identity provider is unavailable; try again later") from None
        try:
            data = orjson.loads(raw) if status == 200 and len(raw) <= _MAX_ANSWER_BYTES else None
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("active"), bool):
            log.error("server.auth: the introspection endpoint %s answered HTTP %d without an RFC 7662 answer "
                      "(check introspection.client_id / client_secret)", endpoint.url, status)
            metrics.auth_fetch("introspection", ok=False)
            raise UpstreamUnavailable("the identity provider is unavailable; try again later")
        metrics.auth_fetch("introspection", ok=True)
        # Refusals are remembered briefly: a client retrying a dead token must not flood the IdP.
        if not data["active"]:
            return Refusal("invalid token: the identity provider says it is not active"), 1.0
        return self._caller(data)

    def _caller(self, claims: dict[str, Any]) -> tuple[Caller | Refusal, float]:
        cfg = self.config
        now = time.time()
        exp = claims.get("exp")
        if isinstance(exp, (int, float)) and not isinstance(exp, bool) and exp <= now - cfg.leeway:
            return Refusal("invalid token: expired"), 1.0
        if cfg.issuer is not None and claims.get("iss") not in (None, cfg.issuer):
            return Refusal("invalid token: wrong issuer"), 1.0
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if cfg.audience is not None and aud is not None and cfg.audience not in auds:
            return Refusal("invalid token: wrong audience"), 1.0
        principal = claims.get("sub") or claims.get("username")
        if not isinstance(principal, str) or not principal:
            return Refusal("invalid token: the identity provider names no subject"), 1.0
        ttl = float(self._endpoint.cache_ttl)
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            ttl = min(ttl, exp - now)
        return caller_from_claims(principal, claims, cfg.claims_mapping, None), ttl
