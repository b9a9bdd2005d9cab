"""Opt-in retry of 429 and 503 answers: :class:`Retry`."""

from __future__ import annotations

import attrs

__all__ = ["Retry"]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"Retry.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class Retry:
    """Retry a request the server answered with one of ``statuses`` (429 quota, 503 not ready).

    The wait is the answer's ``Retry-After``; without one, ``backoff`` doubled at each attempt.
    At most ``attempts`` requests in all, and at most ``max_wait`` seconds of waiting summed
    over them: an answer asking for a longer wait than is left is raised at once (a daily
    quota says "tomorrow", and sleeping until then helps nobody). Requests are retried before
    any of the answer is read, so a stream is retried only when it did not start.
    """

    attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    max_wait: float = attrs.field(default=30.0, validator=_positive)
    backoff: float = attrs.field(default=0.5, validator=_positive)
    statuses: frozenset[int] = frozenset({429, 503})

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None:
            return retry_after
        return float(self.backoff * 2 ** (attempt - 1))
