"""fal's server-proxy route, for ``@fal-ai/client`` configured with ``proxyUrl``.

In that mode the JS client sends every call to one URL (fal's Next.js and Express proxies serve
``/api/fal/proxy``) with the URL it meant to call in the ``x-fal-target-url`` header. fal's
proxies forward the call; fastsvd never does. A target is only a name for one of fastsvd's own
routes: one on fal's hosts that matches a row of ``routes(endpoints)`` (made from the endpoint
registry) has its path and query written into
the request, which then re-enters the application, so the route's own key check, limits and
errors apply exactly as when it is called directly. Everything else is refused, and nothing is
ever fetched:

    400  no target, several, or one that is not a well-formed URL
    403  a URL fastsvd does not serve: not https, a host other than fal's, a port other than
         443, user info, or a path or method outside ``routes(endpoints)``
    405  a method other than GET, POST and PUT on the proxy route itself
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from fastsvd import constants as c
from fastsvd.endpoints import Registry
from fastsvd.errors import BadProxyTarget, ProxyMethodNotAllowed, ProxyRefused, http_status

PROXY_PATH = "/api/fal/proxy"  # where fal's own server proxies are mounted by default
TARGET_HEADER = b"x-fal-target-url"  # @fal-ai/client's middleware.js TARGET_URL_HEADER
METHODS = ("GET", "POST", "PUT")

QUEUE_HOST = "queue.fal.run"
RUN_HOST = "fal.run"
REST_HOSTS = ("rest.fal.ai", "rest.alpha.fal.ai")  # the client's storage initiate calls

_ID = "[A-Za-z0-9-]{1,64}"  # a request id; no dots, slashes or escapes reach the router


@dataclass(frozen=True)
class Route:
    """A call on fal's hosts that fastsvd serves, and where it is served here."""

    method: str
    hosts: tuple[str, ...]
    path: re.Pattern[str]  # the whole target path must match
    prefix: str = ""  # put before the target path to make the path here


def routes(endpoints: Registry) -> tuple[Route, ...]:
    """Every call on fal's hosts that fastsvd serves for ``endpoints``."""
    submits = "|".join(re.escape(e.path) for e in endpoints)
    apps = "|".join(re.escape(f"/{app}") for app in endpoints.apps())
    status = rf"(?:{apps})/requests/{_ID}(/status(/stream)?)?"
    return (
        Route("POST", (QUEUE_HOST,), re.compile(f"(?:{submits})")),  # submit
        Route("GET", (QUEUE_HOST,), re.compile(status)),  # result, status, stream
        Route("PUT", (QUEUE_HOST,), re.compile(rf"(?:{apps})/requests/{_ID}/cancel")),
        Route("POST", (RUN_HOST,), re.compile(f"(?:{submits})"), prefix="/run"),  # sync run
        Route("POST", REST_HOSTS, re.compile("/storage/upload/initiate")),
    )


HOSTS = frozenset((QUEUE_HOST, RUN_HOST, *REST_HOSTS))


def resolve(served: tuple[Route, ...], method: str, targets: list[bytes]) -> tuple[str, str]:
    """The path and query here for a call to ``targets`` (the header's values).

    Raises ``ProxyRefused`` (or a subclass) for anything that is not one of ``served``.
    """
    if method not in METHODS:
        raise ProxyMethodNotAllowed(f"the fal proxy route takes {', '.join(METHODS)}, not {method}")
    if len(targets) != 1:
        missing = "no x-fal-target-url header" if not targets else "several x-fal-target-url"
        raise BadProxyTarget(f"{missing}: send the fal URL to call in exactly one")
    target = targets[0].decode("latin-1")
    if len(target) > c.URL_MAX_CHARS or not all(" " < ch < "\x7f" for ch in target):
        raise BadProxyTarget("x-fal-target-url must be a URL of printable ASCII characters")
    try:
        parts = urllib.parse.urlsplit(target)
        port = parts.port
    except ValueError:
        raise BadProxyTarget("x-fal-target-url is not a valid URL") from None
    if not parts.scheme or not parts.netloc or parts.fragment:
        raise BadProxyTarget("x-fal-target-url must be an absolute URL without a fragment")
    host = parts.netloc.lower().removesuffix(":443") if port == 443 else parts.netloc.lower()
    if parts.scheme != "https" or host not in HOSTS:
        raise ProxyRefused(
            "x-fal-target-url must be https on one of fal's hosts that fastsvd serves "
            f"({', '.join(sorted(HOSTS))}); this server never forwards calls elsewhere",
        )
    for route in served:
        if route.method == method and host in route.hosts and route.path.fullmatch(parts.path):
            return route.prefix + parts.path, parts.query
    raise ProxyRefused(f"fastsvd does not serve {method} {parts.path} on {host}")


class FalProxy:
    """ASGI middleware: serves ``PROXY_PATH`` by re-entering the application at the route the
    target names (see the module docstring)."""

    def __init__(self, app: ASGIApp, endpoints: Registry, path: str = PROXY_PATH) -> None:
        self.app = app
        self.routes = routes(endpoints)
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        targets = [value for name, value in scope["headers"] if name == TARGET_HEADER]
        try:
            path, query = resolve(self.routes, scope["method"], targets)
        except ProxyRefused as exc:
            # answered here: the application's error handlers are inside this middleware
            allowed = isinstance(exc, ProxyMethodNotAllowed)
            headers = {"allow": ", ".join(METHODS)} if allowed else None
            refusal = JSONResponse({"detail": exc.message}, http_status(exc), headers)
            await refusal(scope, receive, send)
            return
        routed = {**scope, "path": path, "raw_path": path.encode(), "query_string": query.encode()}
        await self.app(routed, receive, send)
