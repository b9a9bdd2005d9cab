from __future__ import annotations

import attrs

from stackd import Secret


@attrs.frozen
class EchoConfig:
    prefix: str = ""
    """Put before every answer."""
    models: list[str] = attrs.field(factory=lambda: ["echo-1"])
    """The model names this provider serves; registering another one fails."""
    embedding_dimension: int = 8
    api_key: Secret | None = None
    """Not used for anything; shows that secrets are masked in /v1/providers."""
    ready_after: float = 0.0
    """Seconds, from the first time the core asks, during which the provider says it is still loading
    (requests to it get 503 with Retry-After)."""
