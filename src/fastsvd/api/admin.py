"""API keys, for admin-scope keys: list (never the secrets), create, revoke."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from fastsvd.api import responses
from fastsvd.api.body import StrictJSONRoute
from fastsvd.api.deps import AdminDep, ServicesDep
from fastsvd.errors import NotFound
from fastsvd.schema import CreatedKey, ErrorResponse, KeyList, KeyRequest, KeySummary
from fastsvd.store.keys import KeyInfo, Scope

router = APIRouter(prefix="/admin/keys", tags=["admin"], route_class=StrictJSONRoute)


def _summary(info: KeyInfo) -> KeySummary:
    return KeySummary(
        key_id=info.key_id,
        name=info.name,
        scope=info.scope.value,
        created_at=info.created_at,
        revoked_at=info.revoked_at,
    )


@router.get("", summary="List API keys", responses=responses.ADMIN)
async def list_keys(services: ServicesDep, _admin: AdminDep) -> KeyList:
    keys = await run_in_threadpool(services.keys.list)
    return KeyList(keys=[_summary(info) for info in keys])


@router.post(
    "",
    summary="Create an API key",
    status_code=201,
    responses={**responses.TOO_LARGE, **responses.ADMIN},
)
async def create_key(body: KeyRequest, services: ServicesDep, _admin: AdminDep) -> CreatedKey:
    key, info = await run_in_threadpool(services.keys.create, body.name, Scope(body.scope))
    return CreatedKey(**_summary(info).model_dump(), key=key, webhook_secret=info.webhook_secret)


@router.delete(
    "/{key_id}",
    summary="Revoke an API key",
    responses={404: {"model": ErrorResponse, "description": "No such live key"}, **responses.ADMIN},
)
async def revoke_key(key_id: str, services: ServicesDep, _admin: AdminDep) -> KeySummary:
    if len(key_id) > 64 or not await run_in_threadpool(services.keys.revoke, key_id):
        raise NotFound(f"No live key {key_id}")
    info = next(k for k in await run_in_threadpool(services.keys.list) if k.key_id == key_id)
    return _summary(info)
