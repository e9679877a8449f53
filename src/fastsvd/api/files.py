"""Files: downloads of what the workers made, and fal's two upload protocols (fal-client's
one-shot upload, and the JS client's initiate-then-PUT), plus the submit-time check of an
``image_url`` that names a file uploaded here."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from fastsvd import constants as c
from fastsvd import media
from fastsvd.api import responses
from fastsvd.api.auth import credentials
from fastsvd.api.body import StrictJSONRoute
from fastsvd.api.deps import BaseURL, KeyDep, ServicesDep
from fastsvd.errors import NotFound, RangeNotSatisfiable, TooLarge
from fastsvd.inputs import uploaded_file_id
from fastsvd.net.fetch import url_schemes
from fastsvd.net.guard import check_url
from fastsvd.schema import ErrorResponse, UploadedFile
from fastsvd.services import Services
from fastsvd.store.files import FileRecord, new_file_id, new_record
from fastsvd.store.keys import KeyInfo

router = APIRouter(tags=["files"], route_class=StrictJSONRoute)


def check_image_url(url: str, services: Services) -> None:
    """Refuse at submit an ``image_url`` the worker would not be allowed to fetch or read.

    A data: URI is decoded and its picture's header read (never its pixels); a URL's host is
    resolved and checked. What only the download can show (a redirect to a blocked address, a
    body too large or too slow, a corrupt picture) fails the request later with the same 422.
    """
    if url.startswith("data:"):
        media.check_image(media.decode_data_uri(url, "image_url")[1], "image_url")
        return
    file_id = uploaded_file_id(url)
    if file_id is not None and services.files.get(file_id) is not None:
        return  # a file uploaded here: read from storage, never fetched
    settings = services.settings
    check_url(
        url,
        "image_url",
        schemes=url_schemes(settings.allow_private_urls),
        allow_private=settings.allow_private_urls,
    )


@router.get(
    "/files/{file_id}/{file_name}",
    summary="Download a file",
    responses={
        200: {"description": "The file", "content": {"application/octet-stream": {}}},
        206: {"description": "The requested range of the file"},
        404: {"model": ErrorResponse, "description": "No such file"},
        416: {"description": "The requested range is outside the file"},
    },
)
async def download(
    request: Request, file_id: str, file_name: str, services: ServicesDep
) -> Response:
    record = await run_in_threadpool(services.files.get, file_id) if file_id.isalnum() else None
    if record is None or record.file_name != file_name or record.upload_token is not None:
        raise NotFound("File not found")
    path = services.storage.local_path(record.id)
    if path is not None:
        if not path.is_file():
            raise NotFound("File not found")
        # Starlette answers Range requests (206) itself, so players can seek.
        return FileResponse(path, media_type=record.content_type)
    # An object store: proxied, Range passed through (see docs/deploy.md for why).
    try:
        got = await run_in_threadpool(
            services.storage.download, record.id, request.headers.get("range")
        )
    except RangeNotSatisfiable as exc:
        raise RangeNotSatisfiable(exc.message, size=record.size) from exc
    if got is None:
        raise NotFound("File not found")
    return StreamingResponse(
        iterate_in_threadpool(got.chunks),
        status_code=got.status,
        media_type=record.content_type,
        headers=got.headers,
    )


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > c.UPLOAD_MAX_BYTES:
        raise TooLarge(f"uploads are limited to {c.UPLOAD_MAX_BYTES:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > c.UPLOAD_MAX_BYTES:
            raise TooLarge(f"uploads are limited to {c.UPLOAD_MAX_BYTES:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _clean_name(name: str | None, content_type: str) -> str:
    name = (name or "").replace("/", "_").replace("\\", "_").strip()[:200]
    if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
        extension = content_type.split("/")[-1].split(";")[0].strip()
        name = f"upload.{extension}" if extension.isalnum() else "upload.bin"
    return name


async def _add_upload(
    services: Services, key: KeyInfo, name: str, content_type: str, **details: Any
) -> FileRecord:
    """The record of an uploaded file, kept as long as the outputs are."""
    record = new_record(
        key_id=key.key_id,
        kind="upload",
        file_name=name,
        content_type=content_type,
        retention_s=services.settings.retention_s,
        **details,
    )
    added: FileRecord = await run_in_threadpool(services.files.add, record)
    return added


@router.post("/storage/auth/token", summary="Upload token (fal-client)", responses=responses.KEYED)
async def upload_token(request: Request, key: KeyDep, base: BaseURL) -> JSONResponse:
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    return JSONResponse(
        {
            "token": credentials(request) or "anonymous",
            "token_type": "Key",
            "base_url": base,
            "expires_at": expires.isoformat(),
        }
    )


@router.post(
    "/files/upload",
    summary="Upload a file (fal-client)",
    responses={**responses.TOO_LARGE, **responses.KEYED},
)
async def upload(
    request: Request, services: ServicesDep, key: KeyDep, base: BaseURL
) -> UploadedFile:
    data = await _read_body(request)
    content_type = request.headers.get("content-type", "application/octet-stream")[:255]
    name = _clean_name(request.headers.get("x-fal-file-name"), content_type)
    file_id = new_file_id()
    await run_in_threadpool(services.storage.put, file_id, data, content_type)
    record = await _add_upload(services, key, name, content_type, size=len(data), file_id=file_id)
    return UploadedFile(access_url=base + record.path, content_type=content_type, file_name=name)


@router.post(
    "/storage/upload/initiate",
    summary="Start an upload (fal JS)",
    responses={**responses.TOO_LARGE, **responses.KEYED},
)
async def upload_initiate(
    services: ServicesDep, key: KeyDep, base: BaseURL, body: Annotated[dict[str, Any], Body()]
) -> JSONResponse:
    content_type = str(body.get("content_type") or "application/octet-stream")[:255]
    name = _clean_name(str(body.get("file_name") or ""), content_type)
    token = secrets.token_hex(16)
    record = await _add_upload(services, key, name, content_type, size=0, upload_token=token)
    return JSONResponse(
        {
            "upload_url": f"{base}/storage/upload/{record.id}?token={token}",
            "file_url": base + record.path,
        }
    )


@router.put(
    "/storage/upload/{file_id}",
    summary="Send an initiated upload",
    responses={
        404: {"model": ErrorResponse, "description": "No upload is waiting at this URL"},
        **responses.TOO_LARGE,
    },
)
async def upload_put(
    request: Request, file_id: str, services: ServicesDep, base: BaseURL, token: str = Query("")
) -> JSONResponse:
    record = await run_in_threadpool(services.files.get, file_id) if file_id.isalnum() else None
    expected = record.upload_token if record is not None else None
    if record is None or expected is None or not secrets.compare_digest(expected, token):
        raise NotFound("No upload is waiting at this URL")
    data = await _read_body(request)
    await run_in_threadpool(services.storage.put, record.id, data, record.content_type)
    await run_in_threadpool(services.files.uploaded, record.id, len(data))
    return JSONResponse({"file_url": base + record.path})
