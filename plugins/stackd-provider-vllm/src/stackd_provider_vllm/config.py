"""Configuration of ``remote::vllm``, structured by stackd's converter (errors carry ``$.path``)."""

from __future__ import annotations

import os

import attrs

from stackd import HttpUrl, Seconds, Secret

__all__ = ["VLLMConfig"]


@attrs.frozen
class VLLMConfig:
    """``config:`` of a ``remote::vllm`` provider: where the OpenAI-compatible server is and how to
    talk to it.

    - ``url``: the server; may end in ``/v1`` or not (``http://host:8000`` and
      ``http://host:8000/v1`` are the same server)
    - ``api_token``: sent as ``Authorization: Bearer ...``; never shown or logged
    - ``tls_verify``: true, false, or the path of a CA bundle
    - ``max_tokens``: applied to requests that do not set one (vLLM's own default for
      ``/v1/completions`` is 16 tokens)
    - ``timeout``: seconds of each wait for a byte from the server
    - ``total_timeout``: seconds for a whole non-streamed answer
    - ``stream_first_byte_timeout``: seconds to wait for a stream's first event
    - ``stream_idle_timeout``: seconds of each gap between a stream's events (so a server that drips
      bytes is cut off: 504, or an error frame once the stream began)
    - ``max_connections``: caps the connection pool (0: no cap)
    """

    url: HttpUrl = attrs.field()
    api_token: Secret | None = attrs.field(default=None)
    tls_verify: bool | str = attrs.field(default=True)
    max_tokens: int | None = attrs.field(default=None)
    timeout: Seconds = attrs.field(default=Seconds(600.0))
    total_timeout: Seconds = attrs.field(default=Seconds(600.0))
    stream_first_byte_timeout: Seconds = attrs.field(default=Seconds(600.0))
    stream_idle_timeout: Seconds = attrs.field(default=Seconds(120.0))
    max_connections: int = attrs.field(default=0)

    # Validators cannot see the config path, so their messages name the field themselves.
    @max_tokens.validator
    def _check_max_tokens(self, _: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and value <= 0:
            raise ValueError(f"max_tokens must be a positive integer or null, got {value}")


    @api_token.validator
    def _check_api_token(self, _: attrs.Attribute[Secret | None], value: Secret | None) -> None:
        # The token goes into an Authorization header, where CR, LF or NUL would be header
        # injection (aiohttp refuses to send it). A trailing newline is the usual cause.
        if value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value.reveal()):
            raise ValueError("api_token contains a control character (often a trailing newline "
                             "from a file or a shell); remove it")

    @tls_verify.validator
    def _check_tls_verify(self, _: attrs.Attribute[bool | str], value: bool | str) -> None:
        # Checked when the config is read, so `stackd validate` catches it before start.
        if isinstance(value, str) and not os.path.isfile(os.path.expanduser(value)):
            raise ValueError(
                f"tls_verify: no CA bundle at {value!r}; give true, false or the path of a PEM file"
            )

    @max_connections.validator
    def _check_max_connections(self, _: attrs.Attribute[int], value: int) -> None:
        if value < 0:
            raise ValueError(f"max_connections must be 0 (no cap) or a positive integer, got {value}")

    @property
    def base_url(self) -> str:
        """The server's root, without a trailing ``/v1``: routes are appended as ``/v1/...``."""
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url
