"""/v1/audit: the audit trail, read. An admin sees every record; any other key only its own
tenant's (asking for another tenant is refused, and another tenant's request id is not found).
Verifying the whole chain is for admins.

Reads go to the trail's file (read-only, beside the appends), in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tryfleet.audit import Audit, AuditUnavailable, Filter, Record, Report, parse_since
from tryfleet.audit.query import export_lines

from ..auditing import drained
from ..auth import Admin, needs
from ..keys import Principal, Scope
from ..ledger import read_tenant
from ..problems import documented, not_found
from .iterations import cursor_of

router = APIRouter(prefix="/v1/audit", tags=["audit"])
Reader = Annotated[Principal, Depends(needs(Scope.READ, Scope.BATCH, Scope.SANDBOX))]
Text = Annotated[str | None, Query(max_length=128)]
SinceQ = Annotated[str | None, Query(max_length=64, description="seconds since the epoch, an "
                                     "ISO 8601 time (2026-05-09T10:00:00Z) or a duration back "
                                     "from now (15m, 2h, 7d)")]
TenantQ = Annotated[str | None, Query(max_length=64, description="admins: one tenant's "
                                      "(default: every tenant's); others: their own")]
READS = documented(400, 401, 403, 422, 503)


class AuditRecord(BaseModel):
    seq: int
    at: float = Field(description="seconds since the epoch")
    tenant: str
    actor: str = Field(description="key:<id>, cli:<user>@<host>, scheduler or host:<name>")
    request_id: str
    trace_id: str
    action: str = Field(examples=["exec.start"])
    sandbox: str
    iteration: str
    suite: str
    host: str
    outcome: str
    details: Any = Field(description="the record's details (an object)")
    prev_hash: str
    hash: str = Field(description="sha256(prev_hash bytes + canonical content), hex")


class AuditPage(BaseModel):
    items: list[AuditRecord]
    next_cursor: str | None


class AuditTrace(BaseModel):
    request_id: str
    items: list[AuditRecord] = Field(description="everything the request caused, in order")


class AuditProblem(BaseModel):
    kind: str
    seq: int | None
    message: str


class AuditReport(BaseModel):
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    checkpoints: int
    last_checkpoint_seq: int | None
    problems: list[AuditProblem]
    more_problems: int
    elapsed_s: float


def trail(request: Request) -> Audit:
    audit: Audit | None = getattr(request.app.state, "audit", None)
    if audit is None:
        raise AuditUnavailable("audit unavailable: this gateway has no audit trail")
    return audit


def _item(r: Record) -> AuditRecord:
    return AuditRecord(**r.to_json())


async def read_trail(audit: Audit, fn: Any, *args: Any) -> Any:
    """fn(*args) on the trail, in a thread, once what was recorded before is on disk; a trail
    that cannot be read is a 503 (AuditUnavailable)."""
    await drained(audit)  # what the answers before this one did is on disk
    try:
        return await run_in_threadpool(fn, *args)
    except OSError as err:  # the file is gone or unreadable
        raise AuditUnavailable(f"audit unavailable: the audit trail cannot be read ({err})"
                               ) from None


@router.get("", summary="Audit records, oldest first", responses=READS)
async def list_records(
        who: Reader, request: Request, tenant: TenantQ = None, sandbox: Text = None,
        iteration: Text = None, request_id: Text = None,
        action: Annotated[str | None, Query(max_length=64, description="a name (exec.start) "
                                            "or a family (exec.*)")] = None,
        since: SinceQ = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=20)] = None) -> AuditPage:
    f = Filter(tenant=read_tenant(who, tenant), sandbox=sandbox, iteration=iteration,
               request_id=request_id, action=action,
               since=None if since is None else parse_since(since),
               after_seq=cursor_of(cursor), limit=limit)
    audit = trail(request)
    got: list[Record] = await read_trail(audit, audit.select, f)
    more = len(got) == limit
    return AuditPage(items=[_item(r) for r in got],
                     next_cursor=str(got[-1].seq) if more else None)


@router.get("/trace/{request_id}", summary="Everything one request caused, in order",
            responses=documented(401, 403, 404, 422, 503))
async def trace(request_id: Annotated[str, Path(max_length=128)], who: Reader,
                request: Request) -> AuditTrace:
    audit = trail(request)
    got: list[Record] = await read_trail(audit, audit.trace, request_id,
                                    None if who.admin else who.tenant)
    if not got:  # another tenant's request, like one nobody made
        raise not_found(f"request {request_id!r} in the audit trail")
    return AuditTrace(request_id=request_id, items=[_item(r) for r in got])


@router.get("/verify", summary="Check the whole chain and its checkpoints (admin)",
            responses=documented(401, 403, 503))
async def verify(who: Admin, request: Request) -> AuditReport:
    """`ok` false names each problem: a record edited, removed or moved, records cut off
    after a checkpoint, a checkpoint with a bad signature."""
    audit = trail(request)
    report: Report = await read_trail(audit, audit.verify)
    return AuditReport(**report.to_json())


_NDJSON: dict[int | str, dict[str, Any]] = {200: {
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    "description": "one record (as in GET /v1/audit) per line, oldest first"}}


@router.get("/export", summary="Records since a time, as JSON lines (streamed)",
            response_class=StreamingResponse, responses={**READS, **_NDJSON})
async def export(who: Reader, request: Request, since: SinceQ = None,
                 tenant: TenantQ = None) -> StreamingResponse:
    audit = trail(request)
    await drained(audit)
    if not audit.paths.db.exists():
        raise AuditUnavailable(f"audit unavailable: no audit trail at {audit.paths.db}")
    lines: Iterator[str] = export_lines(audit.paths.db,
                                        None if since is None else parse_since(since),
                                        read_tenant(who, tenant))
    return StreamingResponse(lines, media_type="application/x-ndjson")


__all__ = ["AuditPage", "AuditRecord", "AuditReport", "AuditTrace", "read_trail", "router"]
