"""``provider_type: oauth2_token``: JWTs verified against a JWKS (API.md §4, RFC 8725).

- The key set is fetched over one pooled session, with the optional bearer ``jwks.token`` (a
  Kubernetes service-account token) and ``tls_cafile``; kept ``key_recheck_period``; fetched
  again at once when a token names an unknown ``kid`` (rotation without restart), at most once
  per ``min_refetch_interval``, concurrent requests sharing that one fetch.
- The algorithm comes from the key (its ``alg``, else its type and curve) and is pinned in
  joserfc's decode, whose default set admits HS256: ``alg: none`` and a token HMAC-signed
  with the RSA public key are refused. ``jwk``/``jku``/``x5u`` headers are never followed;
  ``kid`` is only a lookup key.
- A verified token is cached by its hash until its ``exp``: a hot client pays no signature check.
- An identity provider that cannot be reached, or answers garbage, is 503 (it is down), not 401.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from stackd import metrics
from stackd.auth.bearer import AuthRequest, DecisionCache, SingleFlight, bearer_token, token_hash
from stackd.auth.claims import caller_from_claims
from stackd.caller import Caller
from stackd.config.auth import JwksConfig, OAuth2TokenConfig
from stackd.errors import StackdError, Unauthorized, UpstreamUnavailable
from stackd.upstream import make_session

__all__ = ["OAuth2TokenAuthenticator"]

log = logging.getLogger("stackd.auth")

# The key set is small; anything bigger is not a key set.
_MAX_JWKS_BYTES = 1024 * 1024
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K", "EdDSA"}


def _key_alg(key: Key) -> str | None:
    """The one algorithm a key verifies: its ``alg`` when it states one, else what its type
    implies. Symmetric keys never verify: a JWKS is public, so an HMAC key in it is no secret."""
    alg = key.get("alg")
    if isinstance(alg, str):
        return alg if alg in _ASYMMETRIC else None
    if key.key_type == "RSA":
        return "RS256"
    if key.key_type == "EC":
        return _EC_ALGS.get(str(key.get("crv")))
    if key.key_type == "OKP" and key.get("crv") in ("Ed25519", "Ed448"):
        return "EdDSA"
    return None


def _b64json(segment: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return None


@attrs.frozen
class _Keys:
    by_kid: Mapping[str, tuple[Key, str]]
    anonymous: tuple[tuple[Key, str], ...]  # keys without a kid
    fetched_at: float


@attrs.define
class OAuth2TokenAuthenticator:
    config: OAuth2TokenConfig
    _session: aiohttp.ClientSession | None = None
    _keys: _Keys | None = None
    _last_fetch: float = float("-inf")
    _last_fetch_error: str | None = None
    _fetch: SingleFlight[_Keys] = attrs.field(factory=SingleFlight)
    _recheck: asyncio.Task[None] | None = None
    _verified: DecisionCache[Caller] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._verified = DecisionCache(self.config.max_cached_tokens, "jwt")

    @property
    def _jwks(self) -> JwksConfig:
        assert self.config.jwks is not None, "built for a jwks config (build_authenticator)"
        return self.config.jwks

    async def open(self) -> None:
        cfg = self.config
        if not cfg.verify_tls:
            log.warning("server.auth: verify_tls is false: the JWKS at %s is fetched WITHOUT verifying its "
                        "certificate; anyone on the path can serve keys and forge every token", self._jwks.uri)
        tls: bool | Any = cfg.tls_cafile if cfg.tls_cafile is not None else cfg.verify_tls
        headers = {"Accept": "application/json"}
        if self._jwks.token:
            headers["Authorization"] = f"Bearer {self._jwks.token.reveal()}"
        self._session = make_session(timeout=float(cfg.timeout), total_timeout=float(cfg.timeout) * 2,
                                     tls_verify=tls, headers=headers, limit=4,
                                     provider_id="server.auth")

    async def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            await asyncio.gather(self._recheck, return_exceptions=True)
        await self._fetch.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._verified.clear()

    async def health(self) -> dict[str, Any]:
        """For readiness: the JWKS's last fetch. Keys fetched before a failed recheck still
        verify tokens (stale keys beat no keys), so only "no keys at all" is an error.

        Keys are fetched on first use; a server nobody called yet fetches them here, so that
        it can become ready before its first request (no more often than min_refetch_interval).
        """
        if self._keys is None and time.monotonic() - self._last_fetch >= float(self._jwks.min_refetch_interval):
            with contextlib.suppress(UpstreamUnavailable):
                await self._fetch.run(b"jwks", self._load)
        if self._keys is None:
            message = self._last_fetch_error or "the JWKS has not been fetched yet"
            return {"status": "Error", "message": f"{message} ({self._jwks.uri})"}
        out: dict[str, Any] = {"status": "OK", "keys_age_s": round(time.monotonic() - self._keys.fetched_at, 1)}
        if self._last_fetch_error is not None:
            out["last_fetch_error"] = self._last_fetch_error
        return out

    async def authenticate(self, request: AuthRequest) -> Caller:
        token = bearer_token(request.headers)
        key = token_hash(token)
        caller = self._verified.get(key)
        if caller is None:
            caller, exp = await self._verify(token)
            caller = attrs.evolve(caller, client_address=request.client_address)
            self._verified.put(key, caller, exp - time.time())
        elif caller.client_address != request.client_address:
            caller = attrs.evolve(caller, client_address=request.client_address)
        return caller

    # ---- verification ----------------------------------------------------------------------

    async def _verify(self, token: str) -> tuple[Caller, float]:
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthorized("invalid token: not a signed JWT (three dot-separated parts)", reason="malformed")
        header = _b64json(parts[0])
        if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
            raise Unauthorized("invalid token: unreadable header", reason="malformed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("invalid token: kid must be a string", reason="malformed")
        candidates = await self._candidates(kid, header["alg"])
        claims: dict[str, Any] | None = None
        for key, alg in candidates:
            try:
                claims = jwt.decode(token, key, algorithms=[alg]).claims
                break
            except JoseError:
                continue
            except (ValueError, TypeError):  # joserfc on malformed input
                continue
        if claims is None:
            raise Unauthorized("invalid token: signature does not verify with the identity provider's keys")
        exp = self._check_claims(claims)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("invalid token: no sub claim")
        return caller_from_claims(sub, claims, self.config.claims_mapping, None), exp

    async def _candidates(self, kid: str | None, alg: str) -> list[tuple[Key, str]]:
        keys = await self._current_keys()
        if kid is None:
            found = [ka for ka in (*keys.by_kid.values(), *keys.anonymous) if ka[1] == alg]
        else:
            one = keys.by_kid.get(kid)
            if one is None:
                keys = await self._refetch_for_unknown_kid(keys)
                one = keys.by_kid.get(kid)
            found = [one] if one is not None and one[1] == alg else []
        if not found:
            # The algorithm a token names must be the one of a key it names: never the other way.
            raise Unauthorized("invalid token: no key of the identity provider matches its kid and algorithm")
        return found

    def _check_claims(self, claims: Mapping[str, Any]) -> float:
        cfg = self.config
        leeway = int(cfg.leeway)
        if "exp" not in claims:
            raise Unauthorized("invalid token: no exp claim (tokens without expiry are refused)")
        registry = jwt.JWTClaimsRegistry(leeway=leeway, exp={"essential": True})
        try:
            registry.validate(dict(claims))
        except JoseError as exc:
            raise Unauthorized(f"invalid token: {exc.description or type(exc).__name__}") from None
        if cfg.issuer is not None and claims.get("iss") != cfg.issuer:
            raise Unauthorized("invalid token: wrong issuer")
        if cfg.audience is not None:
            aud = claims.get("aud")
            auds = aud if isinstance(aud, list) else [aud]
            if cfg.audience not in auds:
                raise Unauthorized("invalid token: wrong audience")
        return float(claims["exp"])

    # ---- the key set ------------------------------------------------------------------------

    async def _current_keys(self) -> _Keys:
        keys = self._keys
        if keys is None:
            return await self._fetch.run(b"jwks", self._load)
        now = time.monotonic()
        if (self._recheck is None and now - keys.fetched_at >= float(self._jwks.key_recheck_period)
                and now - self._last_fetch >= float(self._jwks.min_refetch_interval)):
            # Rechecked in the background: requests go on with the keys at hand, so an identity
            # provider that is slow or down costs them nothing (stale keys beat no keys).
            self._recheck = asyncio.ensure_future(self._recheck_keys())
        return keys

    async def _recheck_keys(self) -> None:
        try:
            await self._fetch.run(b"jwks", self._load)
        except UpstreamUnavailable:
            fetched = self._keys.fetched_at if self._keys is not None else time.monotonic()
            log.warning("server.auth: could not recheck the JWKS at %s; keeping the keys fetched %.0f s ago",
                        self._jwks.uri, time.monotonic() - fetched)
        finally:
            self._recheck = None

    async def _refetch_for_unknown_kid(self, keys: _Keys) -> _Keys:
        if time.monotonic() - self._last_fetch < float(self._jwks.min_refetch_interval):
            return keys
        return await self._fetch.run(b"jwks", self._load)

    async def _load(self) -> _Keys:
        self._last_fetch = time.monotonic()
        try:
            keys = await self._download()
        except UpstreamUnavailable as exc:
            self._last_fetch_error = exc.message
            metrics.auth_fetch("jwks", ok=False)
            raise
        self._last_fetch_error = None
        metrics.auth_fetch("jwks", ok=True)
        changed = self._keys is None or set(self._keys.by_kid) != set(keys.by_kid)
        self._keys = keys
        if changed:
            # A key gone from the set takes the tokens it verified with it.
            self._verified.clear()
        return keys

    async def _download(self) -> _Keys:
        uri = self._jwks.uri
        assert self._session is not None, "open() the authenticator first"
        try:
            async with self._session.get(uri, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise UpstreamUnavailable(
                        f"the identity provider is unavailable: its JWKS at {uri} answered HTTP {resp.status}")
                body = await resp.content.read(_MAX_JWKS_BYTES + 1)
        except StackdError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("server.auth: cannot fetch the JWKS at %s: %s", uri, type(exc).__name__)
            raise UpstreamUnavailable(f"the identity provider is unavailable: cannot fetch its JWKS ({uri})") from None
        return self._parse(body)

    def _parse(self, body: bytes) -> _Keys:
        uri = self._jwks.uri
        try:
            data = orjson.loads(body) if len(body) <= _MAX_JWKS_BYTES else None
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            log.error("server.auth: the JWKS at %s is not a key set ({\"keys\": [...]})", uri)
            raise UpstreamUnavailable(f"the identity provider is unavailable: its JWKS at {uri} is not a key set")
        by_kid: dict[str, tuple[Key, str]] = {}
        anonymous: list[tuple[Key, str]] = []
        for i, raw in enumerate(data["keys"]):
            try:
                key = KeySet.import_key_set({"keys": [raw]}).keys[0]
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                log.warning("server.auth: JWKS %s: key %d skipped (%s)", uri, i, type(exc).__name__)
                continue
            if key.get("use") not in (None, "sig"):
                continue
            alg = _key_alg(key)
            if alg is None:
                log.warning("server.auth: JWKS %s: key %d skipped (no asymmetric signing algorithm)", uri, i)
                continue
            kid = key.kid
            if kid is None:
                anonymous.append((key, alg))
            else:
                by_kid[kid] = (key, alg)
        return _Keys(by_kid, tuple(anonymous), time.monotonic())


