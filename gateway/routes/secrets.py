"""/v1/secrets: tenants' named secrets, for admins. A value goes in (PUT) and never comes
out: listings give names and when they were set. Values live on the head only, in the data
directory (tryfleet/secretstore.py); the audit trail records the name, never the value."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tryfleet.secretstore import MAX_VALUE_BYTES, SecretInfo, SecretStore, check_name

from ..auditing import call_of
from ..auth import Admin
from ..keys import Principal, check_tenant
from ..problems import documented

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])
TenantP = Annotated[str, Path(max_length=64, description="the tenant the secret is of")]
NameP = Annotated[str, Path(max_length=128, description="the secret's name, also the "
                            "environment variable it is exposed as")]


class SecretSet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    value: str = Field(min_length=1, max_length=MAX_VALUE_BYTES,
                       description="the value; never shown again")


class Secret(BaseModel):
    tenant: str
    name: str
    set_at: float
    set_by: str


class SecretList(BaseModel):
    items: list[Secret]


def store(request: Request) -> SecretStore:
    found: SecretStore = request.app.state.secrets
    return found


def _secret(info: SecretInfo) -> Secret:
    return Secret(tenant=info.tenant, name=info.name, set_at=info.set_at, set_by=info.set_by)


async def _audit(request: Request, who: Principal, action: str, tenant: str,
                 name: str) -> None:
    """The record before the change (AuditUnavailable refuses it); the name, no value."""
    await call_of(request).record(action, tenant=tenant, details={"name": name})


@router.put("/{tenant}/{name}", summary="Store or replace a secret of a tenant (admin)",
            responses=documented(400, 401, 403, 422, 503))
async def put(tenant: TenantP, name: NameP, body: SecretSet, who: Admin,
              request: Request) -> Secret:
    check_tenant(tenant)
    check_name(name)
    await _audit(request, who, "secret.set", tenant, name)
    return _secret(store(request).set(tenant, name, body.value, by=f"key:{who.key_id}"))


@router.get("", summary="A tenant's secrets, names only (admin)",
            responses=documented(400, 401, 403, 422))
async def list_secrets(who: Admin, request: Request,
                       tenant: Annotated[str, Query(max_length=64)]) -> SecretList:
    return SecretList(items=[_secret(s) for s in store(request).list(check_tenant(tenant))])


@router.delete("/{tenant}/{name}", status_code=204, summary="Remove a secret (admin)",
               responses=documented(400, 401, 403, 404, 422, 503))
async def delete(tenant: TenantP, name: NameP, who: Admin, request: Request) -> Response:
    check_tenant(tenant)
    check_name(name)
    await _audit(request, who, "secret.remove", tenant, name)
    store(request).remove(tenant, name)
    return Response(status_code=204)


__all__ = ["Secret", "SecretList", "SecretSet", "router"]
