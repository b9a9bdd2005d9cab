"""Configuration of the ``remote::ollama`` provider."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import attrs

from stackd import HttpUrl, Seconds

__all__ = ["DEFAULT_URL", "OllamaConfig"]

DEFAULT_URL = "http://localhost:11434"


def _default_url() -> HttpUrl:
    # OLLAMA_URL is read when the config is built, not at import, so `stackd serve --env`
    # and tests that set the variable late still take effect.
    value = (os.environ.get("OLLAMA_URL") or DEFAULT_URL).strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"environment variable OLLAMA_URL={value!r} is not an http(s) URL; "
            f"set it like {DEFAULT_URL} or give `url:` in the provider config"
        )
    return HttpUrl(value.rstrip("/"))


@attrs.frozen
class OllamaConfig:
    """``config:`` of a ``remote::ollama`` provider.

    - ``url``: the Ollama server; defaults to ``$OLLAMA_URL``, else ``http://localhost:11434``.
    - ``keep_alive``: how long Ollama keeps a model loaded after a request (``"5m"``, ``"1h"``,
      ``-1`` for ever, ``0`` to unload at once; a number is seconds); unset leaves
      Ollama's own default (5 minutes).
    - ``timeout``: seconds without a byte from Ollama before a call fails with 504. Loading a
      large model can take a while, hence the generous default.
    - ``total_timeout``: seconds for a whole non-streamed answer. Past it (and the two below): 504, or
      an error frame once the stream began, even when Ollama keeps dripping bytes.
    - ``stream_first_byte_timeout``: seconds for a stream's first object (model loading included)
    - ``stream_idle_timeout``: seconds of each gap between a stream's objects
    - ``raw_completions``: send ``/v1/completions`` prompts to Ollama with ``raw: true`` (no chat
      template), which is what a text-completion client means; a request may override it
      with its own ``raw`` field.
    """

    url: HttpUrl = attrs.field(factory=_default_url)
    keep_alive: str | int | None = None
    timeout: Seconds = Seconds(300.0)  # noqa: RUF009 - NewType call, no shared mutable default
    total_timeout: Seconds = Seconds(600.0)  # noqa: RUF009 - NewType call, no shared mutable default
    stream_first_byte_timeout: Seconds = Seconds(300.0)  # noqa: RUF009 - NewType call, no shared mutable default
    stream_idle_timeout: Seconds = Seconds(120.0)  # noqa: RUF009 - NewType call, no shared mutable default
    raw_completions: bool = True
