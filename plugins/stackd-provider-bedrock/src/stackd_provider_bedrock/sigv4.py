"""SigV4 with botocore, without botocore's HTTP: sign a request's headers, and check a signature
(what the fake does)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials

__all__ = ["SERVICE", "frozen", "sign", "verify"]

SERVICE = "bedrock"  # the signing name of both bedrock and bedrock-runtime


async def frozen(credentials: Credentials) -> ReadOnlyCredentials:
    """The current key set. Refreshing (an STS or instance-metadata call) blocks: in a thread."""
    if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
        return await asyncio.to_thread(credentials.get_frozen_credentials)
    return credentials.get_frozen_credentials()


def sign(creds: ReadOnlyCredentials, region: str, method: str, url: str, body: bytes) -> dict[str, str]:
    """The headers of a signed request (pure computation, no I/O)."""
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(creds.access_key, creds.secret_key, creds.token), SERVICE, region).add_auth(request)
    return {k: str(v) for k, v in request.headers.items()}


def verify(secrets: dict[str, str], method: str, url: str, headers: Any, body: bytes, region: str) -> str | None:
    """None when the request carries a valid SigV4 signature by a known key, else why not."""
    auth = headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "missing SigV4 Authorization header"
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    try:
        access_key, date, scope_region, service, _ = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        given = fields["Signature"]
    except (KeyError, ValueError):
        return "malformed Authorization header"
    secret = secrets.get(access_key)
    if secret is None:
        return "The security token included in the request is invalid."
    if (scope_region, service) != (region, SERVICE):
        return f"credential scope {scope_region}/{service} is not {region}/{SERVICE}"
    timestamp = headers.get("X-Amz-Date", "")
    if not timestamp.startswith(date):
        return "X-Amz-Date does not match the credential scope"
    request = AWSRequest(method=method, url=url, data=body,
                         headers={h: headers[h] for h in signed if h != "host" and h in headers})
    request.context["timestamp"] = timestamp
    signer = SigV4Auth(Credentials(access_key, secret, headers.get("X-Amz-Security-Token")), SERVICE, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, given):
        return "The request signature we calculated does not match the signature you provided."
    return None
