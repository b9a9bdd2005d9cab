"""``POST /v1/moderations`` and ``/v1/openai/v1/moderations``: OpenAI's moderation on shields
(:mod:`stackd.apis.moderations`)."""

from __future__ import annotations

from aiohttp import web

from stackd.apis import moderations
from stackd.apis.requests import ModerationRequest
from stackd.apis.responses import Moderation
from stackd.server.http import context, json_response, read_json
from stackd.server.keys import STACK
from stackd.server.route_docs import CALL_ERRORS, documented

__all__ = ["routes"]

routes = web.RouteTableDef()


@documented("OpenAI moderation, answered by shields", body=ModerationRequest, answer=Moderation,
            errors=CALL_ERRORS, api="safety", tag="safety")
async def moderate(request: web.Request) -> web.Response:
    body = await read_json(request)
    stack = request.app[STACK]
    server = stack.loaded.run.server
    return json_response(await moderations.moderate(
        stack.safety, body, context(request),
        default_shield=server.default_moderation_shield, max_inputs=server.max_moderation_inputs,
    ))


for _prefix in ("/v1", "/v1/openai/v1"):
    routes.post(f"{_prefix}/moderations")(moderate)
