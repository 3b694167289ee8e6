"""/healthz (no key needed) and /v1/me (who the key says you are)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from ..auth import Anyone
from ..problems import documented

router = APIRouter()


class Health(BaseModel):
    status: str


class Me(BaseModel):
    key_id: str
    tenant: str
    scopes: list[str]


@router.get("/healthz", tags=["meta"], summary="Liveness; needs no key")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/v1/me", tags=["meta"], summary="The key's id, tenant and scopes",
            responses=documented(401))
async def me(who: Anyone) -> Me:
    return Me(key_id=who.key_id, tenant=who.tenant, scopes=sorted(who.scopes))
