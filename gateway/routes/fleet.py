"""/v1/fleet: the fleet's status (hosts, capacity, pressure, limits, counts), the sizes of its
shared-resource limits, and the kill switch (cancel a tenant's iterations, or everything), for
admins.

Status is the scheduler's answer (only it knows the hosts and what holds each limit) with the
counts by state and tenant read from the ledger here (a scan of the ledger, kept off the
scheduler's event loop), kept for STATUS_TTL_S: however many clients ask, one gateway asks the
scheduler at most five times a second, and answers everyone else from memory, already
rendered. The answer carries `as_of`;
a status at most 200 ms old is as good as the hosts' own reports, which are a second apart.
Nothing else is kept: a gateway that restarts, or several side by side, each just ask anew.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..auth import Admin
from ..ledger import view
from ..problems import documented
from .iteration_models import NAME, CancelOut, FleetCancelIn, FleetOut, LimitIn, LimitSet, fleet

router = APIRouter(prefix="/v1/fleet", tags=["fleet"])
STATUS_TTL_S = 0.2


class ShortCache:
    """One value, fetched again once older than ttl_s; callers that come while it is being
    fetched wait for that one fetch."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._value: bytes | None = None
        self._at = 0.0
        self._fetching: asyncio.Future[bytes] | None = None

    async def get(self, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        if self._value is not None and time.monotonic() - self._at < self.ttl_s:
            return self._value
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fill(fetch))
        return await asyncio.shield(self._fetching)

    async def _fill(self, fetch: Callable[[], Awaitable[bytes]]) -> bytes:
        try:
            self._value = await fetch()
            self._at = time.monotonic()
            return self._value
        finally:
            self._fetching = None

    def clear(self) -> None:
        self._value = None


def _cache(request: Request) -> ShortCache:
    state = request.app.state
    got: ShortCache | None = getattr(state, "fleet_status", None)
    if got is None:
        got = state.fleet_status = ShortCache(STATUS_TTL_S)
    return got


@router.get("", response_model=FleetOut, summary="The fleet's status (admin)",
            responses=documented(401, 403, 503))
async def status(who: Admin, request: Request) -> Response:
    async def fetch() -> bytes:
        st = await request.app.state.fleet.sched("status", False, False)
        counted = await run_in_threadpool(view(request).tenant_counts)  # off the scheduler
        return fleet({**st, **counted}, time.time()).model_dump_json().encode()

    return Response(await _cache(request).get(fetch), media_type="application/json")


@router.put("/limits/{name}", summary="Size a shared-resource limit for everyone (admin)",
            responses=documented(400, 401, 403, 422, 503))
async def set_limit(name: Annotated[str, Path(pattern=NAME, max_length=128)], body: LimitIn,
                    who: Admin, request: Request) -> LimitSet:
    """How many iterations naming `name` in their `limits` may run at once, fleet-wide; kept
    across restarts. Tenants name the limits their iterations hold, never their size."""
    got = await request.app.state.fleet.sched("set_limit", name, body.value, f"key:{who.key_id}")
    _cache(request).clear()
    return LimitSet(name=name, value=body.value, limits=got)


@router.post("/cancel", summary="The kill switch: cancel everything, or one tenant's (admin)",
             responses=documented(400, 401, 403, 422, 503))
async def cancel(body: FleetCancelIn, who: Admin, request: Request) -> CancelOut:
    """The kill switch. Without `tenant`: every iteration of every tenant, queued ones end now
    and running ones are stopped with their VMs destroyed (warm pools are emptied too). With
    `tenant`: that tenant's iterations only. It stops what exists now: what is submitted after
    it runs as usual."""
    sched = request.app.state.fleet.sched
    got = await (sched("cancel", None, None, body.tenant) if body.tenant is not None
                 else sched("cancel", None, None, None, True))
    _cache(request).clear()
    return CancelOut(**got)


__all__ = ["STATUS_TTL_S", "ShortCache", "router"]
