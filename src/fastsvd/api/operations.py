"""What operators and load balancers ask: alive, ready (a worker has its model), metrics; and
the playground page, which lists the registry's endpoints."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from fastsvd.api.body import StrictJSONRoute
from fastsvd.api.deps import ServicesDep
from fastsvd.api.metrics import render as render_metrics
from fastsvd.endpoints import Registry
from fastsvd.schema import ReadyResponse

PLAYGROUND = Path(__file__).with_name("playground.html")  # the web page at /: no build step
ENDPOINTS_MARK = "/*ENDPOINTS*/[]"  # where the page's endpoint list goes


def router(endpoints: Registry) -> APIRouter:
    api = APIRouter(tags=["operations"], route_class=StrictJSONRoute)
    listed = [
        {
            "id": e.id,
            "title": e.title,
            "app": e.app,
            "schema": e.input.__name__,  # its name in /openapi.json's components
            "image_field": e.image_field,
        }
        for e in endpoints
    ]
    playground = PLAYGROUND.read_text(encoding="utf-8").replace(
        ENDPOINTS_MARK, json.dumps(listed).replace("</", "<\\/")
    )

    @api.get("/", include_in_schema=False)
    async def playground_page() -> HTMLResponse:
        return HTMLResponse(playground, headers={"cache-control": "no-cache"})

    @api.get("/health", summary="Alive")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/ready",
        summary="A worker has its model loaded",
        responses={
            200: {"model": ReadyResponse, "description": "A worker is ready"},
            503: {"model": ReadyResponse, "description": "No worker is ready yet"},
        },
    )
    async def ready(services: ServicesDep) -> JSONResponse:
        count, serving, serve_all = await run_in_threadpool(
            services.roster.ready_endpoints, services.settings.serving_window_s
        )
        body = {
            "status": "ready" if count else "starting",
            "workers_ready": count,
            # each endpoint's ready workers: a request for one with none waits in the queue
            "endpoints": {e.id: serve_all + serving[e.id] for e in endpoints},
        }
        return JSONResponse(body, status_code=200 if count else 503)

    @api.get(
        "/metrics",
        summary="Prometheus metrics",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics(services: ServicesDep) -> Response:
        body = await run_in_threadpool(render_metrics, services, endpoints)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @api.get(
        "/.well-known/jwks.json",
        summary="The public keys of fal-style webhook signatures (JWKS, no auth)",
        responses={200: {"description": '`{"keys": [{"kty": "OKP", "crv": "Ed25519", ...}]}`'}},
    )
    async def jwks(services: ServicesDep) -> JSONResponse:
        published = await run_in_threadpool(services.signing_keys.published)
        # short-lived in caches: a rotation's new key must reach receivers soon
        return JSONResponse(
            {"keys": [key.jwk() for key in published]},
            headers={"cache-control": "public, max-age=300"},
        )

    return api
