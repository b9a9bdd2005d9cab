"""Health (Llama Stack's, liveness, readiness), version, providers and inspect."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

import stackd
from stackd.apis.responses import Health, ProviderInfo, ProviderList, Readiness, RouteInfo, RouteList, VersionInfo
from stackd.convert import converter
from stackd.errors import NotFound
from stackd.routing import not_ready_reason
from stackd.server.http import json_response
from stackd.server.keys import CONFIG, DRAINING, LIFECYCLE, STACK
from stackd.server.route_docs import doc_of, documented

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/v1/health")
@documented("Health of the server: OK once every provider is ready", answer=Health, errors={503},
            public=True)
async def health(request: web.Request) -> web.Response:
    stack = request.app.get(STACK)
    if stack is None:
        return json_response(Health("Error", "starting").to_json(), status=503)
    not_ready = sorted(pid for pid, ok in stack.ready().items() if not ok)
    failed = {pid: reason for pid in not_ready if (reason := not_ready_reason(stack.providers[pid])) is not None}
    if failed:
        # Failed for good (e.g. a model whose worker dies in its self-check): no Retry-After.
        message = "not ready: " + "; ".join(f"{pid}: {r}" for pid, r in failed.items())
        return json_response(Health("Error", message).to_json(), status=503)
    if not_ready:
        return json_response(
            Health("Error", f"not ready: loading {', '.join(not_ready)}").to_json(), status=503,
            headers={"Retry-After": "5"},
        )
    return json_response(Health("OK").to_json())


@routes.get("/v1/health/live")
@documented("Liveness: the process answers (nothing else is checked)", answer=Health, public=True)
async def live(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP. Nothing is checked, so a slow dependency never gets
    a healthy process restarted; it stays 200 while the server drains."""
    return json_response(Health("OK").to_json())


@routes.get("/v1/health/ready")
@documented("Readiness: every store, provider and the JWKS answer (cached 1.5 s); 503 when draining",
            answer=Readiness, errors={503}, public=True)
async def ready(request: web.Request) -> web.Response:
    """Readiness: every dependency answers (stackd.server.readiness); 503 at once when draining."""
    if request.app[DRAINING].is_set():
        return json_response({"status": "Error", "message": "shutting down"}, status=503)
    stack = request.app.get(STACK)
    if stack is None:
        return json_response({"status": "Error", "message": "starting"}, status=503)
    report = await request.app[LIFECYCLE].readiness(stack)
    if request.app[DRAINING].is_set():  # SIGTERM came while the checks ran
        return json_response({"status": "Error", "message": "shutting down"}, status=503)
    # Public: statuses and the names of failed checks only. What failed and why (a store's error
    # text can name hosts, files and users) is in the log and, authenticated, in /v1/providers.
    checks = {name: {"status": r.get("status", "Error")} for name, r in report.checks.items()}
    body: dict[str, Any] = {"status": "OK" if report.ready else "Error", "checks": checks}
    if not report.ready:
        failed = sorted(name for name, r in report.checks.items() if r.get("status") == "Error")
        body["message"] = "not ready: " + ", ".join(failed)
    return json_response(body, status=200 if report.ready else 503, headers={"Cache-Control": "no-store"})


@routes.get("/v1/version")
@documented("The server's version", answer=VersionInfo, public=True)
async def version(request: web.Request) -> web.Response:
    return json_response(converter.unstructure(VersionInfo(stackd.__version__)))


async def _provider_info(request: web.Request, provider_id: str) -> dict[str, Any]:
    loaded = request.app[CONFIG]
    p = loaded.providers[provider_id]
    # The readiness run's result: probes and listings share one run of the checks.
    report = await request.app[LIFECYCLE].readiness(request.app[STACK])
    health, checked_at = report.checks[f"provider:{provider_id}"], report.checked_at
    body = ProviderInfo(
        api=p.api,
        provider_id=p.provider_id,
        provider_type=p.provider_type,
        # Unstructuring masks every Secret field, so keys never leave the server.
        config=converter.unstructure(p.config),
    ).to_json()
    body["health"] = {**health, "checked_at": round(checked_at, 3)}
    return body


@routes.get("/v1/providers")
@documented("Every provider with its settings (secrets masked) and health", answer=ProviderList)
async def list_providers(request: web.Request) -> web.Response:
    ids = list(request.app[CONFIG].providers)
    data = await asyncio.gather(*(_provider_info(request, pid) for pid in ids))
    return json_response({"data": list(data)})


@routes.get("/v1/providers/{provider_id}")
@documented("One provider with its settings (secrets masked) and health", answer=ProviderInfo, errors={404})
async def get_provider(request: web.Request) -> web.Response:
    provider_id = request.match_info["provider_id"]
    if provider_id not in request.app[CONFIG].providers:
        raise NotFound(f"provider {provider_id!r} not found; GET /v1/providers lists them")
    return json_response(await _provider_info(request, provider_id))


@routes.get("/v1/inspect/routes")
@documented("The routes served, with the provider types behind each", answer=RouteList)
async def inspect_routes(request: web.Request) -> web.Response:
    loaded = request.app[CONFIG]
    types_by_api: dict[str, list[str]] = {}
    for p in loaded.providers.values():
        types_by_api.setdefault(p.api, []).append(p.provider_type)
    data = []
    for resource in request.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        if not path or not path.startswith("/v1/"):
            continue  # /metrics (server.metrics) is the operator's, not an API route
        for route in resource:
            if route.method == "HEAD":
                continue
            doc = doc_of(route.handler)
            api = doc.api if doc is not None else None
            data.append(converter.unstructure(RouteInfo(
                route=path,
                method=route.method,
                provider_types=sorted(set(types_by_api.get(api, []))) if api else [],
            )))
    return json_response({"data": data})
