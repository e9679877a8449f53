"""The FastAPI application: routers by concern, assembled around the endpoint registry.

    queue.py       fal's queue protocol and sync runs, one pair of routes per endpoint
    files.py       downloads and fal's two upload protocols
    admin.py       API keys (admin scope)
    operations.py  health, ready, metrics, and the playground page
    proxy.py       fal's server-proxy route (/api/fal/proxy), mapped onto the routes above
    errors.py      the one mapping of fastsvd's error tree onto HTTP answers
    deps.py        services, the caller's key and request headers, as FastAPI dependencies

Routes call the stores (``fastsvd.services``); they never import the pipeline. No input a
client can send makes a 500.
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from fastsvd import __version__
from fastsvd.api import admin, errors, files, operations, queue
from fastsvd.api.auth import RateLimits
from fastsvd.api.limits import JSON_BODY_MAX_BYTES, BodyLimit
from fastsvd.api.proxy import FalProxy
from fastsvd.endpoints import ENDPOINTS, Registry
from fastsvd.services import Services


def create_app(services: Services, endpoints: Registry = ENDPOINTS) -> FastAPI:
    """The application, bound to ``services``, serving ``endpoints``."""
    listed = ", ".join(f"`{e.id}`" for e in endpoints)
    app = FastAPI(
        title="fastsvd",
        version=__version__,
        description=f"Self-hosted, fal-compatible Stable Video Diffusion: fal's queue protocol "
        f"for {listed}.",
    )
    app.state.services = services
    app.state.limits = RateLimits(
        services.settings.requests_per_s, services.settings.auth_failures_per_s
    )
    app.add_middleware(
        BodyLimit, max_bytes=JSON_BODY_MAX_BYTES, own_limit=("/files/upload", "/storage/upload/")
    )
    # outermost: fal's proxy route re-enters the app at the route it names (api/proxy.py), so
    # the body limit sees that route
    app.add_middleware(FalProxy, endpoints=endpoints)
    # each router reads JSON bodies strictly (StrictJSONRoute, api/body.py)
    for router in (
        queue.router(endpoints),
        files.router,
        admin.router,
        operations.router(endpoints),
    ):
        app.include_router(router)
    errors.install(app)
    with contextlib.suppress(Exception):
        app.openapi()  # build the schema once at start, not on the first request
    return app
