"""Fetching input files from URLs, safely: public addresses only, every redirect re-checked,
size and time capped.
"""

from __future__ import annotations

import time
import urllib.parse

import httpx

from fastsvd import __version__
from fastsvd import constants as c
from fastsvd.errors import InvalidInput
from fastsvd.net.guard import Resolver, check_url, system_resolver

MAX_REDIRECTS = 5


def url_schemes(allow_private: bool) -> tuple[str, ...]:
    """Schemes an input URL may use: https; http too where private targets are allowed."""
    return ("https", "http") if allow_private else ("https",)


def fetch(
    url: str,
    field: str,
    *,
    allow_private: bool = False,
    schemes: tuple[str, ...] | None = None,
    max_bytes: int = c.FETCH_MAX_BYTES,
    timeout_s: float = c.FETCH_TIMEOUT_S,
    resolver: Resolver = system_resolver,
    client: httpx.Client | None = None,
) -> tuple[str, bytes]:
    """GET ``url``: (content type, body). ``InvalidInput`` naming ``field`` on any refusal."""
    deadline = time.monotonic() + timeout_s
    own_client = client is None
    http = client or httpx.Client(
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        trust_env=False,
    )
    try:
        for _hop in range(MAX_REDIRECTS + 1):
            target = check_url(
                url,
                field,
                schemes=schemes or url_schemes(allow_private),
                allow_private=allow_private,
                resolver=resolver,
            )
            pinned, host, extensions = target.pinned()
            headers = {**host, "user-agent": f"fastsvd/{__version__}", "accept": "image/*"}
            try:
                with http.stream("GET", pinned, headers=headers, extensions=extensions) as r:
                    if r.is_redirect and "location" in r.headers:
                        url = urllib.parse.urljoin(url, r.headers["location"])
                        continue
                    if not r.is_success:
                        raise InvalidInput(field, f"fetching the URL answered HTTP {r.status_code}")
                    return r.headers.get("content-type", ""), _read(r, field, max_bytes, deadline)
            except httpx.HTTPError as exc:
                raise InvalidInput(
                    field, f"the URL could not be fetched ({type(exc).__name__})"
                ) from None
        raise InvalidInput(field, f"more than {MAX_REDIRECTS} redirects")
    finally:
        if own_client:
            http.close()


def _read(response: httpx.Response, field: str, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(field, f"the file is larger than {max_bytes:,} bytes")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise InvalidInput(field, f"the file is larger than {max_bytes:,} bytes")
        if time.monotonic() > deadline:
            raise InvalidInput(field, "the URL was too slow to download")
        chunks.append(chunk)
    return b"".join(chunks)
