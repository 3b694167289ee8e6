"""/v1/batches, /v1/iterations and /v1/events/iterations: submit, list, get, output (live, or
followed as server-sent events), cancel, and the stream of iterations as they end.

Ids are the tenant's own: a tenant key sees only its tenant's iterations (another tenant's
answer 404 exactly as an id nobody used); an admin sees every tenant's, and names one with
`?tenant=` (or `tenant` in a body) where an id alone could be several tenants'. Reads come from
the ledger (see ../ledger.py); submits and cancels go to the scheduler.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, ServerSentEvent, format_sse_event

from tryfleet import logs
from tryfleet.scheduler.records import IN_FLIGHT, TERMINAL, Row

from ..auth import needs, tenant_of
from ..encoding import Encoding, encode
from ..guard import enforce
from ..keys import Principal, Scope
from ..ledger import read_tenant, view, watch
from ..policy import TenantPolicy
from ..problems import Problem, documented, not_found
from .iteration_models import (
    BatchIn,
    BatchOut,
    CancelOut,
    Iteration,
    IterationFull,
    IterationIn,
    IterationPage,
    OneIn,
    OutputOut,
    State,
    full,
    iteration,
)

router = APIRouter(tags=["iterations"])
Reader = Annotated[Principal, Depends(needs(Scope.READ, Scope.BATCH))]
Submitter = Annotated[Principal, Depends(needs(Scope.BATCH))]
TenantQ = Annotated[str | None, Query(max_length=64, description="admins only: whose (default: "
                                                                  "every tenant's)")]
IterationId = Annotated[str, Path(max_length=128, description="the tenant's own id")]
CursorQ = Annotated[str | None, Query(max_length=20, description="from a previous answer")]
EVENTS_PAGE = 500  # ended iterations read per query of a stream
FOLLOW_POLL_S = 0.25
KEEPALIVE_S = 15.0  # a comment line this often while a followed iteration is silent
_CURSOR = re.compile(r"^[0-9]{1,18}$")


def cursor_of(value: str | None, what: str = "cursor") -> int:
    """An opaque cursor from a previous answer (0 when absent)."""
    if value is None or value == "":
        return 0
    if not _CURSOR.match(value):
        raise Problem(400, "bad-request", f"{what} {value[:40]!r} is not a cursor this API "
                      "gave out; pass one from a previous answer, or none to start")
    return int(value)


def _missing(iid: str) -> Problem:
    return not_found(f"iteration {iid!r}")  # the same for another tenant's and nobody's


def _row(request: Request, who: Principal, iid: str, tenant: str | None) -> Row:
    row = view(request).get_row(iid, read_tenant(who, tenant))
    if row is None:
        raise _missing(iid)
    return row


# ---- submit ----------------------------------------------------------------------------------
async def _submit(request: Request, who: Principal, asked: str | None, suite: str,
                  its: list[IterationIn], max_iterations: int | None = None,
                  max_wall_s: float | None = None, expect_limits: dict[str, int] | None = None
                  ) -> tuple[str, list[str]]:
    tenant = tenant_of(who, asked)
    logs.add(tenant=tenant, suite=suite)  # the request's log lines: whose work, which suite
    def allowed(policy: TenantPolicy) -> None:
        for n, it in enumerate(its, 1):
            what = f"iteration {n} ({it.id or 'no id'})"
            policy.check(image=it.image, cpus=it.cpus, mem_mib=it.mem_mib,
                         disk_mib=it.disk_mib, timeout_s=it.timeout_s, what=what)
            policy.check_secrets(it.secrets, what)

    policy = await enforce(request, who, tenant, allowed)
    named = sorted({n for it in its for n in it.secrets})
    if named:  # each held now (404 naming those missing); read again when an attempt starts
        request.app.state.secrets.values(tenant, named)
    for it in its:
        clash = sorted(set(it.env) & set(it.secrets))
        if clash:
            raise Problem(400, "bad-request", f"iteration {it.id or ''}: {', '.join(clash)} "
                          "is both in env and a secret named in secrets: give it once")
    egress = list(policy.egress_rules())  # the policy's alone: IterationIn has no such field
    wires = [{**it.to_wire(), **({"egress": egress} if egress else {})} for it in its]
    ids = await request.app.state.fleet.sched(
        "submit", wires, suite, tenant, expect_limits, max_iterations,
        max_wall_s, request.state.request_id, who.key_id)
    return tenant, list(ids)


SUBMIT = documented(400, 401, 403, 413, 422, 503)
ONE = documented(400, 401, 403, 404, 422, 503)


@router.post("/v1/batches", status_code=201, summary="Submit iterations to a suite",
             responses=SUBMIT)
async def submit_batch(body: BatchIn, who: Submitter, request: Request) -> BatchOut:
    """Recorded on disk, all or none, when this answers. An id already submitted with the same
    spec is not submitted again (its id comes back). Each iteration names the limits it holds,
    never their size (an admin's: PUT /v1/fleet/limits/NAME)."""
    _, ids = await _submit(request, who, body.tenant, body.suite, body.iterations,
                           body.max_iterations, body.max_wall_s, body.expect_limits)
    return BatchOut(suite=body.suite, ids=ids, request_id=request.state.request_id)


@router.post("/v1/iterations", status_code=201, summary="Submit one iteration",
             responses=SUBMIT)
async def submit_one(body: OneIn, who: Submitter, request: Request) -> Iteration:
    it = IterationIn(**body.model_dump(exclude={"suite", "tenant"}))
    tenant, (iid,) = await _submit(request, who, body.tenant, body.suite, [it])
    got = view(request).result(iid, tenant)
    if got is None:  # recorded before the scheduler answered: cannot be missing
        raise _missing(iid)
    return iteration(got, who.admin)


# ---- read ------------------------------------------------------------------------------------
@router.get("/v1/iterations", summary="List iterations, oldest first (no output)",
            responses=documented(400, 401, 403, 422, 503))
async def list_iterations(
        who: Reader, request: Request,
        suite: Annotated[str | None, Query(max_length=128)] = None,
        state: Annotated[list[State] | None, Query(max_length=8)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: CursorQ = None, tenant: TenantQ = None) -> IterationPage:
    got = view(request).results(tenant=read_tenant(who, tenant), suite=suite,
                                states=state, limit=limit, output=False,
                                after_seq=cursor_of(cursor))
    more = len(got) == limit and got[-1].seq is not None
    return IterationPage(items=[iteration(r, who.admin) for r in got],
                         next_cursor=str(got[-1].seq) if more else None)


@router.get("/v1/iterations/{iid}", summary="One iteration with its output and attempts",
            responses=ONE)
async def get_iteration(iid: IterationId, who: Reader, request: Request,
                        encoding: Encoding = "text", tenant: TenantQ = None) -> IterationFull:
    row = _row(request, who, iid, tenant)
    ledger = view(request)

    def read() -> IterationFull:
        r = ledger.result(row.id, row.tenant)
        if r is None:
            raise _missing(iid)
        out = ledger.output(row.id, 0, 0, row.tenant) or (b"", b"")
        return full(r, out, ledger.attempts(row.id, row.tenant), encoding, who.admin)

    return await run_in_threadpool(read)  # the output may be megabytes


async def _chunk(request: Request, row: Row, out_offset: int, err_offset: int
                 ) -> dict[str, Any]:
    """Output past the offsets: recorded once ended, live from the host while it runs."""
    fresh = view(request).get_row(row.id, row.tenant) or row
    if fresh.state in TERMINAL:
        out, err = view(request).output(row.id, out_offset, err_offset, row.tenant) or (b"", b"")
        return {"stdout": out, "stderr": err, "done": True, "state": fresh.state,
                "attempt": fresh.attempt}
    if fresh.state in IN_FLIGHT:
        got: dict[str, Any] = await request.app.state.fleet.sched(
            "output", row.id, out_offset, err_offset, row.tenant)
        return got
    return {"stdout": b"", "stderr": b"", "done": False, "state": fresh.state,
            "attempt": fresh.attempt}


_FOLLOWED: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": "the output, or with follow=true server-sent events: stdout, stderr, "
                   "attempt, then ended"}}


@router.get("/v1/iterations/{iid}/output", summary="Output past offsets; ?follow=true streams it",
            response_model=OutputOut, responses={**ONE, **_FOLLOWED})
async def get_output(iid: IterationId, who: Reader, request: Request,
                     out_offset: Annotated[int, Query(ge=0, le=1 << 40)] = 0,
                     err_offset: Annotated[int, Query(ge=0, le=1 << 40)] = 0,
                     encoding: Encoding = "text", follow: bool = False,
                     attempt: Annotated[int | None, Query(
                         ge=0, le=1_000_000, description="with follow: the attempt the offsets "
                         "are into (from the events so far); when another attempt's output is "
                         "current, it is streamed from 0 after an `attempt` event")] = None,
                     tenant: TenantQ = None) -> Any:
    """Offsets count raw bytes. Live from its host while it runs, the recorded (capped) output
    once it ended (`done`). A retry's output starts again at 0 (`attempt` says whose)."""
    row = _row(request, who, iid, tenant)
    if follow:
        return EventSourceResponse(_follow(request, row, [out_offset, err_offset], encoding,
                                           who.admin, attempt))
    got = await _chunk(request, row, out_offset, err_offset)
    return OutputOut(stdout=encode(got["stdout"], encoding),
                     stderr=encode(got["stderr"], encoding), stdout_bytes=len(got["stdout"]),
                     stderr_bytes=len(got["stderr"]), encoding=encoding, done=got["done"],
                     state=got["state"], attempt=got["attempt"])


def _event(name: str, data: Any) -> bytes:
    return format_sse_event(event=name, data_str=json.dumps(data, separators=(",", ":")))


async def _follow(request: Request, row: Row, offsets: list[int], encoding: Encoding,
                  admin: bool, attempt: int | None = None) -> AsyncIterator[bytes]:
    """stdout and stderr events as the iteration prints ({"data", "offset", "attempt"}), an
    `attempt` event when a retry starts its output again, then `ended` with the iteration.
    The offsets given are into `attempt`'s output (None: the current attempt's, so a client
    that reconnects with the offsets it got to goes on from there)."""
    quiet_since = asyncio.get_running_loop().time()
    while True:
        got = await _chunk(request, row, *offsets)
        if attempt is None:
            attempt = got["attempt"]
        elif got["attempt"] != attempt:
            moved = offsets != [0, 0]
            attempt, offsets = got["attempt"], [0, 0]
            if moved:  # those offsets were into another attempt's output: ask again
                yield _event("attempt", {"attempt": attempt})
                continue
        for n, name in enumerate(("stdout", "stderr")):
            data: bytes = got[name]
            if data:
                yield _event(name, {"data": encode(data, encoding), "offset": offsets[n],
                                    "attempt": attempt})
                offsets[n] += len(data)
                quiet_since = asyncio.get_running_loop().time()
        if got["done"]:
            r = view(request).result(row.id, row.tenant)
            if r is not None:
                yield _event("ended", iteration(r, admin).model_dump())
            return
        if asyncio.get_running_loop().time() - quiet_since >= KEEPALIVE_S:
            yield KEEPALIVE_COMMENT
            quiet_since = asyncio.get_running_loop().time()
        await asyncio.sleep(FOLLOW_POLL_S)


# ---- cancel ----------------------------------------------------------------------------------
@router.post("/v1/iterations/{iid}/cancel", summary="Cancel one iteration", responses=ONE)
async def cancel_iteration(iid: IterationId, who: Submitter, request: Request,
                           tenant: TenantQ = None) -> CancelOut:
    """Queued: it ends now; running: it is stopped and its VM destroyed; ended: nothing."""
    row = _row(request, who, iid, tenant)
    got = await request.app.state.fleet.sched("cancel", row.id, None, row.tenant)
    return CancelOut(**got)


# ---- the stream of endings -------------------------------------------------------------------
class StreamStart:
    def __init__(self, tenant: str | None, suite: str | None, cursor: int) -> None:
        self.tenant, self.suite, self.cursor = tenant, suite, cursor


def _stream_start(
        who: Reader, request: Request,
        suite: Annotated[str | None, Query(max_length=128)] = None,
        cursor: Annotated[str | None, Query(max_length=20, description="where to start: "
                                            "from a previous event's id, or `now`")] = None,
        last_event_id: Annotated[str | None, Header(max_length=20)] = None,
        tenant: TenantQ = None) -> StreamStart:
    """Checked before the stream starts, so a bad request is a problem, not a broken stream."""
    whose = read_tenant(who, tenant)
    if suite is not None:
        owners = [whose] if whose is not None else view(request).suite_tenants(suite)
        if not owners or view(request).suite(owners[0], suite) is None:
            raise not_found(f"suite {suite!r}")
    if last_event_id:
        start = cursor_of(last_event_id, "Last-Event-ID")
    elif cursor == "now":
        start = view(request).top_end_seq()
    else:
        start = cursor_of(cursor)
    return StreamStart(whose, suite, start)


@router.get("/v1/events/iterations", response_class=EventSourceResponse,
            summary="Server-sent events: one `ended` per iteration as it ends", responses=ONE)
async def ended_events(who: Reader, request: Request,
                       start: Annotated[StreamStart, Depends(_stream_start)]
                       ) -> AsyncIterator[ServerSentEvent]:
    """Each event's `id:` is its end cursor: a client that reconnects with `Last-Event-ID`
    gets every iteration that ended after it, once. Keep-alive comments while nothing ends."""
    ledger, ends = view(request), watch(request)
    cursor = start.cursor
    while True:
        got, nxt = await run_in_threadpool(ledger.ended_since, cursor, tenant=start.tenant,
                                           suite=start.suite, limit=EVENTS_PAGE, output=False)
        for r in got:
            yield ServerSentEvent(event="ended", data=iteration(r, who.admin),
                                  id=str(r.end_seq))
        cursor = nxt
        if len(got) < EVENTS_PAGE:
            await ends.wait_past(cursor, KEEPALIVE_S)


__all__ = ["cursor_of", "router"]
