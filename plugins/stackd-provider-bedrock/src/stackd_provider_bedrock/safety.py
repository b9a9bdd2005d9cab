"""The ``remote::bedrock`` safety provider: ApplyGuardrail over aiohttp."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from botocore.credentials import Credentials
from botocore.session import Session

from stackd import CallContext, Shield
from stackd.apis.safety import message_text
from stackd.errors import (
    BadRequest,
    FieldError,
    NotFound,
    StackdError,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from stackd.upstream import UpstreamLimits, make_session
from stackd_provider_bedrock.config import BedrockConfig
from stackd_provider_bedrock.sigv4 import frozen, sign

__all__ = ["BedrockSafetyProvider"]

log = logging.getLogger("stackd_provider_bedrock")

# Bedrock content filter types that OpenAI's moderation categories name (for /v1/moderations).
_OPENAI = {"HATE": ["hate"], "INSULTS": ["harassment"], "SEXUAL": ["sexual"], "VIOLENCE": ["violence"],
           "MISCONDUCT": ["illicit"]}
_DEFAULT_MESSAGE = "Sorry, the model cannot answer this question."


def _credentials(config: BedrockConfig) -> tuple[Credentials | None, str]:
    """Blocking (files, environment, maybe instance metadata): called in a thread."""
    session = Session(profile=config.profile_name)
    region = config.region_name or session.get_config_variable("region") or "us-east-1"
    if config.aws_access_key_id and config.aws_secret_access_key:
        token = config.aws_session_token.reveal() if config.aws_session_token else None
        return Credentials(config.aws_access_key_id.reveal(), config.aws_secret_access_key.reveal(), token), region
    return session.get_credentials(), region


class BedrockSafetyProvider:
    def __init__(self, config: BedrockConfig, provider_id: str, limits: UpstreamLimits,
                 credentials: Credentials | None, region: str) -> None:
        self.config = config
        self.provider_id = provider_id
        self.limits = limits
        self.credentials = credentials
        self.region = region
        base = config.endpoint_url.rstrip("/") if config.endpoint_url else None
        self.runtime_url = base or f"https://bedrock-runtime.{region}.amazonaws.com"
        self.control_url = base or f"https://bedrock.{region}.amazonaws.com"
        self.session = make_session(total_timeout=float(config.timeout), timeout=float(config.timeout),
                                    provider_id=provider_id)

    @classmethod
    async def open(cls, config: BedrockConfig, provider_id: str, limits: UpstreamLimits) -> BedrockSafetyProvider:
        credentials, region = await asyncio.to_thread(_credentials, config)
        if credentials is None:
            log.warning("provider %r: no AWS credentials found (config, environment, ~/.aws, roles); calls will "
                        "fail until some are available", provider_id)
        return cls(config, provider_id, limits, credentials, region)

    def __repr__(self) -> str:
        return f"BedrockSafetyProvider(provider_id={self.provider_id!r}, region={self.region!r})"

    async def close(self) -> None:
        await self.session.close()

    # -- calls ----------------------------------------------------------------------------------

    async def _call(self, method: str, url: str, payload: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        if self.credentials is None:
            raise UpstreamUnavailable(f"provider {self.provider_id!r}: no AWS credentials; set aws_access_key_id and "
                                      "aws_secret_access_key in its config, or provide the default chain's")
        body = orjson.dumps(payload) if payload is not None else b""
        for attempt in range(self.config.retries + 1):
            headers = sign(await frozen(self.credentials), self.region, method, url, body)
            try:
                async with self.session.request(method, url, data=body or None, headers=headers) as resp:
                    raw = await resp.content.read(self.limits.max_body_bytes + 1)
                    status = resp.status
            except (TimeoutError, aiohttp.ServerTimeoutError):
                failure: StackdError = UpstreamTimeout(f"provider {self.provider_id!r}: Bedrock did not answer in time")
            except aiohttp.ClientError as exc:
                failure = UpstreamUnavailable(f"provider {self.provider_id!r}: cannot reach Bedrock "
                                              f"({type(exc).__name__})")
            else:
                if len(raw) > self.limits.max_body_bytes:
                    raise UpstreamBadResponse(f"provider {self.provider_id!r}: Bedrock's answer is over "
                                              "server.max_upstream_body_bytes")
                try:
                    data = orjson.loads(raw) if raw else {}
                except orjson.JSONDecodeError:
                    raise UpstreamBadResponse(f"provider {self.provider_id!r}: Bedrock answered HTTP {status} "
                                              "with a body that is not JSON") from None
                if not isinstance(data, dict):
                    raise UpstreamBadResponse(f"provider {self.provider_id!r}: Bedrock's answer is not an object")
                if status != 429 and status < 500:
                    return status, data
                failure = UpstreamUnavailable(f"provider {self.provider_id!r}: Bedrock answered HTTP {status}: "
                                              f"{str(data.get('message') or data.get('Message') or '')[:200]}")
            if attempt < self.config.retries:
                await asyncio.sleep(0.2 * 2**attempt)
        raise failure

    def _refused(self, status: int, data: dict[str, Any], what: str) -> StackdError:
        message = str(data.get("message") or data.get("Message") or "")[:300]
        if status in (401, 403):
            return UpstreamUnavailable(f"provider {self.provider_id!r}: AWS refused the credentials for {what}: "
                                       f"{message}")
        if status == 404:
            return NotFound(f"provider {self.provider_id!r}: {what} does not exist: {message}")
        return UpstreamBadResponse(f"provider {self.provider_id!r}: Bedrock refused {what} (HTTP {status}): {message}")

    # -- the protocol ---------------------------------------------------------------------------

    async def register_shield(self, shield: Shield) -> Shield:
        version = shield.params.get("guardrailVersion")
        if not isinstance(version, str) or not version:
            raise BadRequest(f"shield {shield.identifier!r}: params.guardrailVersion is required for remote::bedrock "
                             "(a version number as a string, or \"DRAFT\")",
                             [FieldError("$.params.guardrailVersion", "required: a string")])
        url = (f"{self.control_url}/guardrails/{quote(shield.provider_resource_id, safe='')}"
               f"?guardrailVersion={quote(version, safe='')}")
        status, data = await self._call("GET", url, None)
        if status != 200:
            raise self._refused(status, data, f"guardrail {shield.provider_resource_id!r} version {version!r}")
        return shield

    async def run_shield(
        self, shield: Shield, messages: list[dict[str, Any]], params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        version = str(shield.params.get("guardrailVersion") or "DRAFT")
        last = messages[-1].get("role") if messages else None
        # What is judged: the answer (OUTPUT) when the assistant spoke last, else the user's turns (INPUT).
        source = "OUTPUT" if last == "assistant" else "INPUT"
        texts = [message_text(messages[-1].get("content"))] if source == "OUTPUT" else [
            message_text(m.get("content")) for m in messages if m.get("role") == "user"]
        content = [{"text": {"text": t}} for t in texts if t]
        if not content:
            return {"violation": None}
        url = (f"{self.runtime_url}/guardrail/{quote(shield.provider_resource_id, safe='')}"
               f"/version/{quote(version, safe='')}/apply")
        status, data = await self._call("POST", url, {"source": source, "content": content})
        if status != 200:
            failure = self._refused(status, data, f"guardrail {shield.provider_resource_id!r} version {version!r}")
            if isinstance(failure, NotFound):  # the shield exists here; its guardrail does not: a setup problem
                raise UpstreamUnavailable(failure.message)
            raise failure
        action = data.get("action")
        if action == "NONE":
            return {"violation": None}
        if action != "GUARDRAIL_INTERVENED":
            raise UpstreamBadResponse(f"provider {self.provider_id!r}: ApplyGuardrail answered action {action!r}")
        outputs = data.get("outputs")
        outputs = outputs if isinstance(outputs, list) else []
        message = " ".join(o["text"] for o in outputs if isinstance(o, dict) and isinstance(o.get("text"), str))
        assessments = data.get("assessments")
        assessments = assessments if isinstance(assessments, list) else []
        return {
            "violation": {
                "violation_level": "error",
                "user_message": message or _DEFAULT_MESSAGE,
                "metadata": {
                    "guardrail_id": shield.provider_resource_id,
                    "guardrail_version": version,
                    "source": source,
                    "action_reason": data.get("actionReason"),
                    "assessments": assessments,
                    "openai_categories": _openai_categories(assessments),
                },
            }
        }



def _openai_categories(assessments: list[Any]) -> list[str]:
    names: list[str] = []
    for assessment in assessments:
        policy = assessment.get("contentPolicy") if isinstance(assessment, dict) else None
        filters = policy.get("filters") if isinstance(policy, dict) else None
        for f in filters if isinstance(filters, list) else []:
            for name in _OPENAI.get(str(f.get("type")) if isinstance(f, dict) else "", []):
                if name not in names:
                    names.append(name)
    return names
