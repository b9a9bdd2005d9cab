"""``stackd serve`` over TLS and mutual TLS, with certificates made here by trustme."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

REFUSED = (ssl.SSLError, urllib.error.URLError, ConnectionError, http.client.RemoteDisconnected)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _tls_config(tmp_path: Path, ca: trustme.CA, port: int, *, mtls: bool) -> Path:
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    text = f"""\
version: 2
apis: [inference]
providers:
  inference:
  - provider_id: echo
    provider_type: inline::echo
metadata_store: {{type: sqlite, db_path: {tmp_path / 'reg.db'}}}
inference_store: {{type: sqlite, db_path: {tmp_path / 'inf.db'}}}
models:
- model_id: echo-1
server:
  port: {port}
  tls_certfile: {tmp_path / 'cert.pem'}
  tls_keyfile: {tmp_path / 'key.pem'}
"""
    if mtls:
        text += f"  tls_cafile: {tmp_path / 'ca.pem'}\n"
    path = tmp_path / "tls.yaml"
    path.write_text(text)
    return path


def _client_ctx(ca: trustme.CA | None, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


def _get(url: str, ctx: ssl.SSLContext | None) -> tuple[int, Any]:
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def _chat(url: str, ctx: ssl.SSLContext) -> str:
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps({"model": "echo-1", "messages": [{"role": "user", "content": "over tls"}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        return str(json.loads(resp.read())["choices"][0]["message"]["content"])


def test_https(stackd_serve: Callable[..., Any], tmp_path: Path, ca: trustme.CA, port: Callable[[], int]) -> None:
    p = port()
    proc = stackd_serve(str(_tls_config(tmp_path, ca, p, mtls=False)))
    announced = proc.wait_serving()
    assert announced.startswith("https://")
    url = f"https://127.0.0.1:{p}"
    assert _get(url + "/v1/health", _client_ctx(ca)) == (200, {"status": "OK"})
    assert _chat(url, _client_ctx(ca)) == "over tls"
    # A client that does not trust our CA refuses the server.
    with pytest.raises(urllib.error.URLError) as info:
        _get(url + "/v1/health", _client_ctx(trustme.CA()))
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    # Plain HTTP on the TLS port gets no answer.
    with pytest.raises(REFUSED):
        _get(f"http://127.0.0.1:{p}/v1/health", None)
    assert proc.stop() == 0


def test_mutual_tls(stackd_serve: Callable[..., Any], tmp_path: Path, ca: trustme.CA, port: Callable[[], int]) -> None:
    p = port()
    proc = stackd_serve(str(_tls_config(tmp_path, ca, p, mtls=True)))
    proc.wait_serving()
    url = f"https://127.0.0.1:{p}"
    with pytest.raises(REFUSED):
        _get(url + "/v1/health", _client_ctx(ca))  # no client certificate
    with pytest.raises(REFUSED):
        _get(url + "/v1/health", _client_ctx(ca, trustme.CA().issue_cert("intruder@example.com")))
    client_cert = ca.issue_cert("client@example.com")
    assert _get(url + "/v1/health", _client_ctx(ca, client_cert)) == (200, {"status": "OK"})
    assert _chat(url, _client_ctx(ca, client_cert)) == "over tls"
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()


def test_bad_tls_files_are_reported(run_cli: Callable[..., Any], tmp_path: Path, ca: trustme.CA) -> None:
    path = _tls_config(tmp_path, ca, 0, mtls=False)
    (tmp_path / "key.pem").unlink()
    done = run_cli("validate", str(path))
    assert done.returncode == 2
    assert "$.server.tls_keyfile" in done.stderr and "key.pem" in done.stderr
    assert "Traceback" not in done.stderr
