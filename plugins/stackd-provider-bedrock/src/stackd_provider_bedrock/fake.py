"""A local stand-in of the Amazon Bedrock HTTP API, for tests: ApplyGuardrail (runtime) and
GetGuardrail (control plane) on one server.

It does what tests need a real service for: every request must carry a valid SigV4 signature
by a known key (else 403, as AWS answers), an unknown guardrail or version is 404, a bad body is
400 ``ValidationException``, and ApplyGuardrail evaluates a small policy per guardrail: blocked
words, denied topics (keywords) and content filters (keywords per filter type). A fake that
answered ``NONE`` to everything would make guardrail tests meaningless; this one intervenes.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import attrs
import orjson
from aiohttp import web

from stackd_provider_bedrock.sigv4 import verify

__all__ = ["FakeBedrock", "Guardrail"]


@attrs.frozen
class Guardrail:
    versions: tuple[str, ...] = ("DRAFT", "1")
    blocked_words: tuple[str, ...] = ()
    denied_topics: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    content_filters: dict[str, tuple[str, ...]] = attrs.field(factory=dict)  # "VIOLENCE": ("kill",)
    blocked_input_messaging: str = "Sorry, I cannot help with that request."
    blocked_outputs_messaging: str = "Sorry, I cannot share that answer."


@attrs.define(eq=False)
class FakeBedrock:
    guardrails: dict[str, Guardrail]
    keys: dict[str, str] = attrs.field(factory=lambda: {"AKIDFAKE": "fake-secret"})
    region: str = "us-east-1"
    fail_status: int | None = None  # answer every request with this status (throttling, 5xx)
    requests: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    _runner: web.AppRunner | None = attrs.field(default=None, init=False)
    _port: int = attrs.field(default=0, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def __aenter__(self) -> FakeBedrock:
        app = web.Application()
        app.router.add_post("/guardrail/{gid}/version/{version}/apply", self._apply)
        app.router.add_get("/guardrails/{gid}", self._get)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _check(self, request: web.Request) -> tuple[bytes, web.Response | None]:
        body = await request.read()
        why = verify(self.keys, request.method, f"{self.url}{request.path_qs}", request.headers, body, self.region)
        if why is not None:
            return body, _error(403, "UnrecognizedClientException" if "token" in why else "InvalidSignatureException",
                                why)
        if self.fail_status is not None:
            return body, _error(self.fail_status, "ThrottlingException" if self.fail_status == 429
                                else "InternalServerException", "fake failure")
        return body, None

    def _find(self, request: web.Request, version: str) -> Guardrail | web.Response:
        guardrail = self.guardrails.get(request.match_info["gid"])
        if guardrail is None or version not in guardrail.versions:
            return _error(404, "ResourceNotFoundException", "The specified guardrail could not be found")
        return guardrail

    async def _get(self, request: web.Request) -> web.Response:
        _, refused = await self._check(request)
        if refused is not None:
            return refused
        version = request.query.get("guardrailVersion", "DRAFT")
        found = self._find(request, version)
        if isinstance(found, web.Response):
            return found
        return _json(200, {"guardrailId": request.match_info["gid"], "version": version, "status": "READY",
                           "name": request.match_info["gid"]})

    async def _apply(self, request: web.Request) -> web.Response:
        raw, refused = await self._check(request)
        if refused is not None:
            return refused
        found = self._find(request, request.match_info["version"])
        if isinstance(found, web.Response):
            return found
        try:
            body = orjson.loads(raw)
            source = body["source"]
            texts = [item["text"]["text"] for item in body["content"]]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _error(400, "ValidationException", "1 validation error detected: content")
        if source not in ("INPUT", "OUTPUT") or not all(isinstance(t, str) for t in texts):
            return _error(400, "ValidationException", "source must be INPUT or OUTPUT")
        self.requests.append({"source": source, "texts": texts, "guardrail": request.match_info["gid"]})
        return _json(200, _evaluate(found, source, " ".join(texts).lower()))


def _evaluate(g: Guardrail, source: str, text: str) -> dict[str, Any]:
    words = [{"match": w, "action": "BLOCKED"} for w in g.blocked_words if w.lower() in text]
    topics = [{"name": name, "type": "DENY", "action": "BLOCKED"}
              for name, keys in g.denied_topics.items() if any(k.lower() in text for k in keys)]
    filters = [{"type": kind, "confidence": "HIGH", "filterStrength": "HIGH", "action": "BLOCKED"}
               for kind, keys in g.content_filters.items() if any(k.lower() in text for k in keys)]
    assessment: dict[str, Any] = {}
    if words:
        assessment["wordPolicy"] = {"customWords": words, "managedWordLists": []}
    if topics:
        assessment["topicPolicy"] = {"topics": topics}
    if filters:
        assessment["contentPolicy"] = {"filters": filters}
    usage = {"topicPolicyUnits": 1, "contentPolicyUnits": 1, "wordPolicyUnits": 1}
    if not assessment:
        return {"usage": usage, "action": "NONE", "outputs": [], "assessments": [{}]}
    message = g.blocked_input_messaging if source == "INPUT" else g.blocked_outputs_messaging
    return {"usage": usage, "action": "GUARDRAIL_INTERVENED", "actionReason": "Guardrail blocked.",
            "outputs": [{"text": message}], "assessments": [assessment]}


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _error(status: int, kind: str, message: str) -> web.Response:
    return _json(status, {"message": message}, {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/"})
