"""The TLS context of ``server.tls_*``, built the same way by ``validate`` and ``serve``.

Loading the files is the only check that holds: a path that exists may still be unreadable,
hold no PEM, hold a key of another certificate, or a key behind a passphrase (which OpenSSL
would ask for on the terminal of a server that has none).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs

from stackd.config.schema import ServerConfig

__all__ = ["TLSFileError", "read_file", "server_ssl_context"]


@attrs.define
class TLSFileError(Exception):
    """``field`` (``tls_certfile``...) names a file that cannot serve; ``message`` says why."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"server.{self.field}: {self.message}"


class _Passphrase(Exception):
    """Raised from OpenSSL's password callback: stackd has no passphrase to give."""


def _ask_passphrase() -> str:
    raise _Passphrase


def read_file(field: str, path: Path) -> bytes:
    """The bytes of the file of ``server.<field>``, or :class:`TLSFileError`."""
    try:
        with path.open("rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSFileError(field, f"file not found: {path}") from None
    except OSError as exc:
        raise TLSFileError(field, f"cannot read {path}: {exc.strerror or exc}") from None


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()


def server_ssl_context(server: ServerConfig) -> ssl.SSLContext | None:
    """The server's context, or ``None`` without TLS; :class:`TLSFileError` names a bad file."""
    if server.tls_certfile is None or server.tls_keyfile is None:
        return None
    cert, key = server.tls_certfile, server.tls_keyfile
    if b"-----BEGIN CERTIFICATE-----" not in read_file("tls_certfile", cert):
        raise TLSFileError("tls_certfile", f"{cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    if b"PRIVATE KEY-----" not in read_file("tls_keyfile", key):
        raise TLSFileError("tls_keyfile", f"{key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_verify_locations(cafile=str(cert))  # parses the certificates alone, so a bad one is named
    except ssl.SSLError as exc:
        raise TLSFileError("tls_certfile", f"{cert} is not a valid PEM certificate: {_reason(exc)}") from None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_ask_passphrase)
    except _Passphrase:
        raise TLSFileError("tls_keyfile", f"{key} is encrypted with a passphrase; stackd cannot ask for one: "
                           "store the key unencrypted (e.g. openssl pkey -in KEY -out KEY.plain), readable "
                           "only by the server's user") from None
    except ssl.SSLError as exc:
        if "mismatch" in _reason(exc):
            raise TLSFileError("tls_keyfile", f"{key} is not the private key of the certificate in {cert}") from None
        raise TLSFileError("tls_keyfile", f"{key} is not a usable private key for {cert}: {_reason(exc)}") from None
    except OSError as exc:
        raise TLSFileError("tls_keyfile", f"cannot load {key}: {exc.strerror or exc}") from None
    if server.tls_cafile is not None:
        ca = server.tls_cafile
        read_file("tls_cafile", ca)
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as exc:
            raise TLSFileError("tls_cafile", f"{ca} holds no valid PEM CA certificate: {_reason(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
