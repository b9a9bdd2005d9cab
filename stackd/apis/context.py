"""What a provider call receives beside its parameters: :class:`CallContext`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from stackd.caller import ANONYMOUS, Caller

__all__ = ["CallContext"]


@attrs.frozen
class CallContext:
    """Per-request data handed to a provider call, and to nothing else.

    ``provider_data`` is the decoded ``X-LlamaStack-Provider-Data`` header of this request
    (an upstream API key for this call, say). It is passed as an argument, never stored on
    the provider, so concurrent requests cannot see each other's. ``request_id`` is the
    request's ``X-Request-ID`` (the client's, or one the server made), for log lines.
    """

    caller: Caller = ANONYMOUS
    provider_data: Mapping[str, Any] = attrs.field(factory=dict)
    request_id: str = ""
