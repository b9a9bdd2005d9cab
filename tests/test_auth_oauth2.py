"""server.auth oauth2_token against a real JWKS server on 127.0.0.1 over HTTPS (a CA made here,
the ``tls_cafile`` case) that requires the bearer ``jwks.token`` (the Kubernetes case)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient
from joserfc import jwt
from joserfc.jwk import RSAKey

from stackd.testing.local_server import local_server

JWKS_TOKEN = "k8s-sa-token-Zm9vYmFyYmF6cXV4"
ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "stackd"


@attrs.define
class Jwks:
    """A JWKS endpoint over HTTPS: serves ``keys``, counts fetches, refuses a wrong bearer."""

    keys: list[RSAKey]
    url: str = ""
    fetches: int = 0
    refused: int = 0
    down: bool = False

    def doc(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) | {"use": "sig"} for k in self.keys]}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": "system:serviceaccount:team-a:alice", "iss": ISSUER, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 600, "groups": ["team-a"]}
    return {k: v for k, v in (base | over).items() if v is not None}


def sign(key: RSAKey, header: dict[str, Any] | None = None, **over: Any) -> str:
    return jwt.encode({"alg": "RS256", "kid": key.kid, **(header or {})}, claims(**over), key)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def jwks(ca: trustme.CA) -> AsyncIterator[Jwks]:
    state = Jwks([rsa("k1")])

    async def keys(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {JWKS_TOKEN}":
            state.refused += 1
            return web.json_response({"message": "Unauthorized"}, status=401)
        state.fetches += 1
        if state.down:
            return web.Response(text="<html>bad gateway</html>", status=502)
        return web.json_response(state.doc())

    app = web.Application()
    app.router.add_get("/openid/v1/jwks", keys)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    async with local_server(app, ssl_context=ctx) as base:
        state.url = f"{base}/openid/v1/jwks"
        yield state


def auth_yaml(url: str, cafile: Path, extra: str = "", recheck: float = 3600) -> str:
    # The seed's Kubernetes service-account example, as written (API.md §4).
    return f"""\
  auth:
    provider_type: oauth2_token
    config:
      jwks:
        uri: {url}
        token: "${{env.TOKEN:}}"
        key_recheck_period: {recheck}
{extra}      issuer: {ISSUER}
      audience: {AUDIENCE}
      tls_cafile: {cafile}
"""


@pytest.fixture
def make_client(serve_app: Any, write_config: Callable[..., Path], jwks: Jwks, ca: trustme.CA, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    monkeypatch.setenv("TOKEN", JWKS_TOKEN)

    async def make(
        extra: str = "", url: str | None = None, recheck: float = 3600
    ) -> TestClient[web.Request, web.Application]:
        path = write_config(server=auth_yaml(url or jwks.url, cafile, extra, recheck))
        return TestClient(await serve_app(path))

    return make


async def status(c: TestClient[web.Request, web.Application], token: str | None, scheme: str = "Bearer") -> int:
    headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
    resp = await c.get("/v1/models", headers=headers)
    body = await resp.text()
    if token:
        assert token not in body
    if resp.status == 401:
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert json.loads(body)["error"]["type"] == "authentication_error"
    return resp.status


async def test_valid_token_is_accepted_and_health_stays_public(make_client: Any, jwks: Jwks) -> None:
    async with await make_client() as c:
        assert (await c.get("/v1/health")).status == 200
        assert (await c.get("/v1/version")).status == 200
        assert jwks.fetches == 0
        assert await status(c, sign(jwks.keys[0])) == 200
        assert jwks.refused == 0 and jwks.fetches == 1


async def test_caller_attributes_come_from_claims(make_client: Any, jwks: Jwks) -> None:
    token = sign(jwks.keys[0], resource_access={"stackd": {"roles": ["admin"]}}, scope="a b")
    mapping = ('      claims_mapping: {sub: roles, groups: teams, "resource_access.stackd.roles": roles, '
               'scope: projects}\n')
    async with await make_client(mapping) as c:
        resp = await c.post("/v1/models", json={"model_id": "echo-2", "provider_id": "echo"},
                            headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        owner = (await resp.json())["owner"]
        assert owner == {"roles": ["system:serviceaccount:team-a:alice", "admin"], "teams": ["team-a"],
                         "projects": ["a", "b"]}


def _hs256_with_public_key(key: RSAKey) -> str:
    pem = key.as_pem(private=False)
    head = _b64(json.dumps({"alg": "HS256", "kid": key.kid, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims()).encode())
    sig = _b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


def _alg_none(key: RSAKey) -> str:
    head = _b64(json.dumps({"alg": "none", "kid": key.kid}).encode())
    return f"{head}.{_b64(json.dumps(claims()).encode())}."


def _tampered(key: RSAKey) -> str:
    head, _, sig = sign(key).split(".")
    body = _b64(json.dumps(claims(sub="admin", groups=["admins"])).encode())
    return f"{head}.{body}.{sig}"


async def test_rejected_tokens(make_client: Any, jwks: Jwks) -> None:
    good = jwks.keys[0]
    attacker = rsa("k1")  # same kid, another key
    other = rsa("evil")
    cases = {
        "garbage": "not-a-jwt-sk-live-4f9c2e1b7a",
        "alg none": _alg_none(good),
        "HS256 signed with the RSA public key": _hs256_with_public_key(good),
        "embedded jwk": sign(attacker, {"jwk": attacker.as_dict(private=False)}),
        "embedded jwk without kid": jwt.encode({"alg": "RS256", "jwk": other.as_dict(private=False)}, claims(),
                                               other),
        "jku elsewhere": sign(other, {"jku": "https://127.0.0.1:1/evil.json"}),
        "kid injection": sign(other, {"kid": "../../../../etc/passwd' OR '1'='1"}),
        "no exp": sign(good, exp=None),
        "expired": sign(good, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "not yet valid": sign(good, nbf=int(time.time()) + 3600),
        "issued in the future": sign(good, iat=int(time.time()) + 3600),
        "wrong issuer": sign(good, iss="https://evil.example"),
        "wrong audience": sign(good, aud="someone-else"),
        "unknown kid": sign(other),
        "tampered payload": _tampered(good),
    }
    async with await make_client() as c:
        assert await status(c, None) == 401
        assert await status(c, "dXNlcjpwYXNz", scheme="Basic") == 401
        for name, token in cases.items():
            assert await status(c, token) == 401, name
        assert await status(c, sign(good)) == 200
        # Unknown kids fetched the key set again at most once (min_refetch_interval).
        assert jwks.fetches <= 2


async def test_rotation_without_restart(make_client: Any, jwks: Jwks) -> None:
    old = jwks.keys[0]
    async with await make_client("        min_refetch_interval: 0.05\n") as c:
        cached = sign(old)
        assert await status(c, cached) == 200
        new = rsa("k2")
        jwks.keys = [new]
        await asyncio.sleep(0.1)
        assert await status(c, sign(new)) == 200
        assert jwks.fetches == 2
        await asyncio.sleep(0.1)
        assert await status(c, sign(old)) == 401  # the key was removed from the set
        assert await status(c, cached) == 401  # and takes the tokens it verified with it


async def test_concurrent_requests_share_one_fetch(make_client: Any, jwks: Jwks) -> None:
    token = sign(jwks.keys[0])
    async with await make_client() as c:
        results = await asyncio.gather(*(status(c, token) for _ in range(50)))
        assert set(results) == {200}
        assert jwks.fetches == 1


async def test_identity_provider_down_is_503(make_client: Any, jwks: Jwks, port: Callable[[], int]) -> None:
    async with await make_client(url=f"https://127.0.0.1:{port()}/keys") as c:
        resp = await c.get("/v1/models", headers={"Authorization": f"Bearer {sign(jwks.keys[0])}"})
        assert resp.status == 503
        assert "identity provider" in (await resp.json())["error"]["message"]
    jwks.down = True
    async with await make_client() as c:
        assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {sign(jwks.keys[0])}"})).status == 503


async def test_untrusted_certificate_is_503(serve_app: Any, write_config: Callable[..., Path], jwks: Jwks,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    monkeypatch.setenv("TOKEN", JWKS_TOKEN)
    async with TestClient(await serve_app(write_config(server=auth_yaml(jwks.url, other_ca)))) as c:
        assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {sign(jwks.keys[0])}"})).status == 503
    assert jwks.fetches == 0


async def test_token_never_in_logs_or_answers(make_client: Any, jwks: Jwks, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret_like = "sk-proj-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    head = _b64(json.dumps({"alg": "RS256", "kid": "nope"}).encode())
    forged = f"{head}.{secret_like}.{secret_like}"
    async with await make_client() as c:
        for token in (secret_like, forged, sign(jwks.keys[0], exp=1)):
            resp = await c.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == 401
            assert token not in await resp.text()
            assert secret_like not in await resp.text()
    assert secret_like not in caplog.text
    assert JWKS_TOKEN not in caplog.text


async def test_key_recheck_happens_in_the_background(make_client: Any, jwks: Jwks) -> None:
    """Past key_recheck_period the set is fetched again without holding requests; with the
    identity provider down meanwhile, the keys at hand go on verifying."""
    key = jwks.keys[0]
    async with await make_client("        min_refetch_interval: 0.05\n", recheck=0.2) as c:
        assert await status(c, sign(key)) == 200
        await asyncio.sleep(0.3)
        jwks.down = True
        started = time.monotonic()
        assert await status(c, sign(key, sub="another")) == 200
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.2)
        assert jwks.fetches == 2  # the background recheck ran (and found the provider down)
        assert await status(c, sign(key, sub="third")) == 200
