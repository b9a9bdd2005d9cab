"""Configuration of the ``remote::bedrock`` provider."""

from __future__ import annotations

from typing import Annotated

import attrs

from stackd import Check, HttpUrl, Seconds, Secret

__all__ = ["BedrockConfig"]

Retries = Annotated[int, Check(lambda n: 0 <= n <= 10, "a whole number from 0 to 10")]


@attrs.frozen
class BedrockConfig:
    """``config:`` of a ``remote::bedrock`` provider.

    - ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``: credentials
      (secrets: masked in ``/v1/providers`` and logs). Without them, botocore's default chain
      (environment, ``~/.aws``, ``profile_name``, container and instance roles), resolved off the
      event loop.
    - ``region_name``: the AWS region (default: the chain's, else ``us-east-1``).
    - ``profile_name``: a profile of ``~/.aws/config`` for the default chain.
    - ``endpoint_url``: the Bedrock endpoint for both the runtime (ApplyGuardrail) and the
      control plane (GetGuardrail, when a shield is registered); default: AWS's for the region.
    - ``timeout``: seconds for one call; past it 504.
    - ``retries``: further tries after a throttle (429), a 5xx or a connection failure, with a
      short backoff (0.2 s, 0.4 s, ...); then 503.
    """

    aws_access_key_id: Secret | None = None
    aws_secret_access_key: Secret | None = None
    aws_session_token: Secret | None = None
    region_name: str | None = None
    profile_name: str | None = None
    endpoint_url: HttpUrl | None = None
    timeout: Seconds = Seconds(10.0)  # noqa: RUF009 - NewType call, no shared mutable default
    retries: Retries = 2
