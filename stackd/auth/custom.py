"""``provider_type: custom``: an endpoint of the operator's decides (API.md §4).

stackd POSTs ``{"api_key": token, "request": {"path", "headers" (all but Authorization),
"params" ({key: [values]})}}`` and accepts a 200 in either form Llama Stack has documented:
``{"access_attributes": {...}, "message"}`` or ``{"principal", "attributes", "message"}``.

- Non-200 is 401; a timeout or a refused connection is 503; a 200 in neither form is logged
  as the endpoint's fault (502-class) and answered 401, never a crash.
- No attributes: the token stands as the caller's namespace, as a keyed hash, never raw.
- Decisions are cached by token hash (``cache_ttl``, never past the token's ``exp`` when it is
  a JWT; refusals ``failure_cache_ttl``), and concurrent requests with one token share one call.
  The endpoint is thus assumed to decide on the token: an answer that depends on the path would
  be reused for other paths within ``cache_ttl``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs
import orjson

from stackd import metrics
from stackd.auth.bearer import AuthRequest, DecisionCache, Refusal, RemoteDecisions, keyed_hash
from stackd.caller import Caller
from stackd.config.auth import CustomAuthConfig
from stackd.errors import StackdError, UpstreamUnavailable
from stackd.upstream import make_session

__all__ = ["CustomAuthenticator"]

log = logging.getLogger("stackd.auth")

_MAX_ANSWER_BYTES = 256 * 1024
_CATEGORIES = ("roles", "teams", "projects", "namespaces")


def _jwt_exp(token: str) -> float | None:
    """The ``exp`` of a token that looks like a JWT, unverified: it only shortens the cache."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def _attributes(raw: Any) -> dict[str, tuple[str, ...]] | None:
    """``{category: [values]}`` of an answer, or None when it is not that shape."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        return None
    out: dict[str, tuple[str, ...]] = {}
    for category, values in raw.items():
        if values is None:
            continue
        if isinstance(values, str):
            values = [values]
        if not isinstance(category, str) or not isinstance(values, list) or not all(
                isinstance(v, str) for v in values):
            return None
        if values:
            out[category] = tuple(values)
    return out


@attrs.define
class CustomAuthenticator:
    config: CustomAuthConfig
    hash_key: bytes
    _session: aiohttp.ClientSession | None = None
    _decisions: RemoteDecisions = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._decisions = RemoteDecisions(DecisionCache(self.config.max_cached_tokens, "custom"))

    async def open(self) -> None:
        cfg = self.config
        if not cfg.verify_tls:
            log.warning("server.auth: verify_tls is false: the auth endpoint %s is called WITHOUT verifying its "
                        "certificate; anyone on the path can answer for it", cfg.endpoint)
        tls: bool | Any = cfg.tls_cafile if cfg.tls_cafile is not None else cfg.verify_tls
        self._session = make_session(timeout=float(cfg.timeout), total_timeout=float(cfg.timeout),
                                     tls_verify=tls, headers={"Accept": "application/json"},
                                     provider_id="server.auth")

    async def close(self) -> None:
        await self._decisions.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def authenticate(self, request: AuthRequest) -> Caller:
        return await self._decisions.caller(request, lambda token: self._decide(token, request))

    async def _decide(self, token: str, request: AuthRequest) -> tuple[Caller | Refusal, float]:
        decision = await self._call(token, request)
        cfg = self.config
        ttl = float(cfg.failure_cache_ttl if isinstance(decision, Refusal) else cfg.cache_ttl)
        exp = _jwt_exp(token)
        if exp is not None:
            ttl = min(ttl, exp - time.time())
        return decision, ttl

    async def _call(self, token: str, request: AuthRequest) -> Caller | Refusal:
        endpoint = self.config.endpoint
        body = {
            "api_key": token,
            "request": {
                "path": request.path,
                "headers": {str(k): v for k, v in request.headers.items() if k.lower() != "authorization"},
                "params": {str(k): list(v) for k, v in request.query.items()},
            },
        }
        assert self._session is not None, "open() the authenticator first"
        try:
            async with self._session.post(endpoint, data=orjson.dumps(body), allow_redirects=False,
                                          headers={"Content-Type": "application/json"}) as resp:
                status = resp.status
                raw = await resp.content.read(_MAX_ANSWER_BYTES + 1)
        except StackdError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("server.auth: the auth endpoint %s cannot be reached: %s", endpoint, type(exc).__name__)
            metrics.auth_fetch("custom", ok=False)
            raise UpstreamUnavailable("the authentication service is unavailable; try again later") from None
        metrics.auth_fetch("custom", ok=True)
        if status != 200:
            return Refusal(f"invalid token: the authentication service refused it (HTTP {status})")
        caller = self._parse(raw, token)
        if caller is None:
            log.error("server.auth: the auth endpoint %s answered 200 with a body in neither documented form "
                      "({\"access_attributes\": {...}} or {\"principal\", \"attributes\"}): treated as a refusal",
                      endpoint)
            return Refusal("invalid token: the authentication service gave no usable answer")
        return caller

    def _parse(self, raw: bytes, token: str) -> Caller | None:
        try:
            data = orjson.loads(raw) if len(raw) <= _MAX_ANSWER_BYTES else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        principal = data.get("principal")
        if principal is not None and (not isinstance(principal, str) or not principal):
            return None
        if "access_attributes" in data:
            attributes = _attributes(data["access_attributes"])
        elif "principal" in data or "attributes" in data:
            attributes = _attributes(data.get("attributes"))
        else:
            return None
        if attributes is None:
            return None
        hashed = keyed_hash(self.hash_key, token)
        if not attributes:
            # Llama Stack answered every request 500 here; the token itself is the namespace.
            attributes = {"namespaces": (hashed,)}
        return Caller(principal=principal or hashed, attributes=attributes)
