"""/v1/keys: API keys, for admins. A key's secret is in the answer to its creation only."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from ..auditing import call_of
from ..auth import Admin
from ..keys import KeyInfo, KeyStore, parse_scopes
from ..problems import documented

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=documented(401, 403, 422))
MAX_EXPIRY_S = 10 * 365 * 86400


class KeyCreate(BaseModel):
    tenant: str = Field(description="the tenant the key acts for", examples=["acme"])
    scopes: list[str] = Field(min_length=1, max_length=5,
                              description="some of sandbox, batch, read, admin, metrics",
                              examples=[["sandbox", "batch"]])
    expires_in_s: float | None = Field(None, gt=0, le=MAX_EXPIRY_S,
                                       description="seconds until the key stops working")
    name: str = Field("", max_length=200, description="what the key is for")


class Key(BaseModel):
    id: str
    tenant: str
    scopes: list[str]
    name: str
    state: str = Field(description="active, expired or revoked")
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None


class NewKey(Key):
    key: str = Field(description="the key itself: shown this once, never again")


class KeyList(BaseModel):
    items: list[Key]


def _key(info: KeyInfo) -> Key:
    return Key(id=info.id, tenant=info.tenant, scopes=list(info.scopes), name=info.name,
               state=info.state, created_at=info.created_at, created_by=info.created_by,
               expires_at=info.expires_at, revoked_at=info.revoked_at)


def _store(request: Request) -> KeyStore:
    store: KeyStore = request.app.state.keys
    return store


@router.post("", status_code=201, summary="Make a key (admin)", responses=documented(400))
async def create(body: KeyCreate, who: Admin, request: Request) -> NewKey:
    expires = None if body.expires_in_s is None else time.time() + body.expires_in_s
    call = call_of(request)
    await call.settle()  # api.request before key.create
    info, token = await run_in_threadpool(  # key.create is on disk first: not in the loop
        _store(request).create, body.tenant, parse_scopes(body.scopes),
        created_by=f"key:{who.key_id}", expires_at=expires, name=body.name,
        request_id=call.request_id, trace_id=call.trace_id)
    return NewKey(**_key(info).model_dump(), key=token)


@router.get("", summary="List keys, without their secrets (admin)")
async def list_keys(who: Admin, request: Request,
                    tenant: Annotated[str | None, Query(max_length=64)] = None) -> KeyList:
    return KeyList(items=[_key(k) for k in _store(request).list(tenant)])


@router.get("/{key_id}", summary="One key, without its secret (admin)",
            responses=documented(404))
async def get(key_id: str, who: Admin, request: Request) -> Key:
    return _key(_store(request).get(key_id))


@router.delete("/{key_id}", status_code=204, summary="Revoke a key at once (admin)",
               responses=documented(404))
async def revoke(key_id: str, who: Admin, request: Request) -> Response:
    call = call_of(request)
    await call.settle()
    await run_in_threadpool(_store(request).revoke, key_id, f"key:{who.key_id}",
                            call.request_id, call.trace_id)
    return Response(status_code=204)
