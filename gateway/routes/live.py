"""/v1/live: what the control room shows, as server-sent events; /v1/throughput: iterations
ended per minute over the last hour, by state.

    GET /v1/live[?tenant=T][&audit_cursor=N]     (Last-Event-ID: N resumes the audit feed)
    event: snapshot   {"as_of", "tenant", "admin", "counts", "suites", "throughput",
                       "sandboxes", "fleet", "switches", ...}   every SNAPSHOT_S
    event: audit      {"items": [records as GET /v1/audit gives them]}   id: the last seq
    event: error      a problem (the key was revoked or expired meanwhile), then the end

A snapshot holds only what the key may read through the endpoints that serve the same thing
(controlroom/snapshot.py says which); the audit feed only the records GET /v1/audit would give
it: an admin's every tenant's, any other key its tenant's. The key is checked again before each
snapshot: once it is revoked or expired, the stream says so and ends. The first audit event
holds the last AUDIT_BACKLOG records (or those after `audit_cursor`), the next ones what was
appended since, read every AUDIT_POLL_S.

Like every call, each is recorded in the audit trail (api.request before the first byte,
api.response when the stream ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from tryfleet.audit import Audit, Filter, Record

from .. import problems
from ..auth import needs
from ..controlroom.snapshot import WINDOW_MIN, Sight, snapshots, throughput
from ..keys import KeyStore, Principal, Scope
from ..ledger import read_tenant, view
from ..problems import documented
from .audit import read_trail
from .iterations import cursor_of

router = APIRouter(tags=["live"])
Watcher = Annotated[Principal, Depends(needs(Scope.READ, Scope.BATCH, Scope.SANDBOX))]
Reader = Annotated[Principal, Depends(needs(Scope.READ, Scope.BATCH))]
TenantQ = Annotated[str | None, Query(max_length=64, description="admins: one tenant's view "
                                      "(default: every tenant's); others: their own")]
SNAPSHOT_S = 1.0
AUDIT_POLL_S = 0.5
AUDIT_BACKLOG = 200
AUDIT_PAGE = 500

_STREAM: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": "server-sent events: `snapshot` every second, `audit` as records are "
                   "appended, `error` (a problem) before the stream ends"}}


class Minute(BaseModel):
    at: int = Field(description="the minute's start, seconds since the epoch")
    counts: dict[str, int] = Field(description="iterations that ended in it, by state")


class Throughput(BaseModel):
    step_s: int
    since: float = Field(description="the first minute's start")
    points: list[Minute] = Field(description="every minute of the window, oldest first")


@router.get("/v1/throughput", summary="Iterations ended per minute, by state",
            responses=documented(400, 401, 403, 422, 503))
async def get_throughput(who: Reader, request: Request, tenant: TenantQ = None,
                         minutes: Annotated[int, Query(ge=1, le=24 * 60)] = WINDOW_MIN
                         ) -> Throughput:
    """Every minute of the last `minutes` (this one included) with how many iterations ended
    in it in each state: a tenant key's own tenant's, an admin's every tenant's or one's."""
    whose = read_tenant(who, tenant)
    got = await run_in_threadpool(throughput, view(request), whose, time.time(), minutes)
    return Throughput(**got)


class LiveStart:
    def __init__(self, sight: Sight, cursor: int | None) -> None:
        self.sight, self.cursor = sight, cursor


def _live_start(who: Watcher, request: Request, tenant: TenantQ = None,
                audit_cursor: Annotated[str | None, Query(
                    max_length=20, description="the audit feed from after this seq (default: "
                    "its last records)")] = None,
                last_event_id: Annotated[str | None, Header(max_length=20)] = None
                ) -> LiveStart:
    """Checked before the stream starts, so a bad request is a problem, not a broken stream."""
    whose = read_tenant(who, tenant)
    if last_event_id:
        cursor: int | None = cursor_of(last_event_id, "Last-Event-ID")
    elif audit_cursor is not None:
        cursor = cursor_of(audit_cursor, "audit_cursor")
    else:
        cursor = None
    return LiveStart(Sight.of(who, whose), cursor)


def _records(audit: Audit, tenant: str | None, cursor: int | None) -> list[Record]:
    if cursor is None:
        return audit.select(Filter(tenant=tenant, limit=AUDIT_BACKLOG, newest=True))
    return audit.select(Filter(tenant=tenant, after_seq=cursor, limit=AUDIT_PAGE))


async def _audit_events(request: Request, tenant: str | None, cursor: int | None
                        ) -> tuple[list[ServerSentEvent], int | None]:
    audit: Audit | None = getattr(request.app.state, "audit", None)
    if audit is None or not audit.paths.db.exists():
        return [], cursor
    got: list[Record] = await read_trail(audit, _records, audit, tenant, cursor)
    if not got:
        return [], cursor if cursor is not None else 0
    return [ServerSentEvent(event="audit", data={"items": [r.to_json() for r in got]},
                            id=str(got[-1].seq))], got[-1].seq


@router.get("/v1/live", response_class=EventSourceResponse, summary="The control room's "
            "live view: snapshots and the audit feed, as server-sent events",
            responses={**documented(400, 401, 403, 422, 503), **_STREAM})
async def live(who: Watcher, request: Request,
               start: Annotated[LiveStart, Depends(_live_start)]
               ) -> AsyncIterator[ServerSentEvent]:
    keys: KeyStore = request.app.state.keys
    sight, cursor = start.sight, start.cursor
    next_snapshot = 0.0
    loop = asyncio.get_running_loop()
    while True:
        if loop.time() >= next_snapshot:
            if keys.active(who.key_id) is None:  # revoked or expired since the stream began
                p = problems.unauthorized("the key is not valid any more: revoked or expired")
                yield ServerSentEvent(event="error", data=problems.body(request, p))
                return
            raw = await snapshots(request).get(request, sight)
            yield ServerSentEvent(event="snapshot", raw_data=raw.decode())
            next_snapshot = loop.time() + SNAPSHOT_S
        events, cursor = await _audit_events(request, sight.tenant, cursor)
        for e in events:
            yield e
        await asyncio.sleep(AUDIT_POLL_S)


__all__ = ["AUDIT_BACKLOG", "SNAPSHOT_S", "Throughput", "router"]
