"""Who may do what: the caller's key (FastAPI dependencies), its scopes, and its tenant.

A tenant's key acts only for its tenant; what belongs to another tenant does not exist for it
(404, as for an id nobody used). An admin key acts for every tenant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from tryfleet import logs

from .auditing import call_of, route_of
from .keys import KeyStore, Principal, Scope, check_tenant
from .metrics import denied
from .problems import forbidden, unauthorized


def _token(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        kind, _, value = auth.partition(" ")
        return value.strip() if kind.lower() == "bearer" else None
    return request.headers.get("x-api-key")


async def principal(request: Request) -> Principal:
    """The caller (async, like every dependency on the hot path: FastAPI runs a plain `def`
    dependency in a worker thread, a hop that costs more than the key check itself)."""
    token = _token(request)
    if not token:
        denied("no_key")
        raise unauthorized("this API needs a key: send `Authorization: Bearer <key>` (make "
                           "one with `tryfleet key create --tenant T`)")
    keys: KeyStore = request.app.state.keys
    who = keys.verify(token)
    if who is None:
        denied("bad_key")
        raise unauthorized("the key is not valid: unknown, revoked or expired")
    request.state.principal = who
    call_of(request).admit(who)  # its key on the request's audit records and log lines
    params = request.path_params  # and what it is about
    logs.add(route=route_of(request.scope), sandbox=params.get("sid"),
             iteration=params.get("iid"), suite=params.get("suite"))
    return who


def needs(*scopes: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: the caller, who must hold one of `scopes` (admin holds all)."""
    names = " or ".join(f"`{s.value}`" for s in scopes)

    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if not any(who.may(s) for s in scopes):
            denied("scope")
            raise forbidden(f"this key lacks the scope this needs: {names}", scopes=[
                s.value for s in scopes])
        return who

    return check


def tenant_of(who: Principal, asked: str | None) -> str:
    """The tenant a request acts for: a tenant key's own; an admin's choice (or its own)."""
    if asked is None or asked == who.tenant:
        return who.tenant
    if not who.admin:
        denied("tenant")
        raise forbidden(f"a key of tenant {who.tenant!r} acts only for that tenant")
    return check_tenant(asked)


def sees(who: Principal, tenant: str) -> bool:
    """Whether the caller may see a thing of `tenant` at all."""
    return who.admin or who.tenant == tenant


Admin = Annotated[Principal, Depends(needs(Scope.ADMIN))]
Anyone = Annotated[Principal, Depends(principal)]

__all__ = ["Admin", "Anyone", "needs", "principal", "sees", "tenant_of"]
