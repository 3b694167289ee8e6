"""/v1/sandboxes: interactive sandboxes, their commands (a result, or server-sent events as
the output comes) and, in sandbox_files.py, their files.

Opening, extending and closing go through the scheduler (capacity, quotas, the ledger). What
runs inside a sandbox goes straight to the node agent of its host, after one read of the
ledger says the sandbox is the caller's and open: no detour through the scheduler. A node that
no longer holds the sandbox (its VM died, its host restarted) gets it closed, and the caller a
404 saying it is gone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from tryfleet.audit import Digest
from tryfleet.errors import PolicyDenied, TryfleetError
from tryfleet.masking import mask
from tryfleet.scheduler.sandboxes import SandboxBook, SandboxRecord
from tryfleet.wire import (
    ExecChunk,
    ExecReply,
    ExecRequest,
    SandboxGone,
    guest_path_problem,
    pack,
    unpack,
)

from .. import auditing, problems
from ..auth import needs, tenant_of
from ..exposure import expose, mask_values, stream_maskers
from ..guard import enforce
from ..keys import Principal, Scope
from ..policy import TenantPolicy
from ..problems import Problem, documented
from .switches import frozen_sandbox

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

Encoding = Literal["text", "base64"]
MAX_ARG_CHARS = 128 * 1024
MAX_STDIN_CHARS = 16 * 1024 * 1024
MAX_EXEC_S = 7 * 86400
ImageName = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                             pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetaValue = Annotated[str, StringConstraints(max_length=1024)]
Arg = Annotated[str, StringConstraints(max_length=MAX_ARG_CHARS, pattern=r"^[^\x00]*$")]
EnvKey = Annotated[str, StringConstraints(min_length=1, max_length=256,
                                          pattern=r"^[^=\x00]+$")]
SecretName = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                              pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
SandboxId = Annotated[str, Path(min_length=1, max_length=64, description="the sandbox's id")]
_use, _read = needs(Scope.SANDBOX), needs(Scope.SANDBOX, Scope.READ)
Caller = Annotated[Principal, Depends(_use)]
Reader = Annotated[Principal, Depends(_read)]
NOT_FOUND = documented(401, 403, 404, 422)


# ---- models ----------------------------------------------------------------------------------
class SandboxCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    image: ImageName = Field("base", description="the image the VM boots")
    cpus: int = Field(1, ge=1, le=1024)
    mem_mib: int = Field(512, ge=128, le=16 * 1024 * 1024)
    disk_mib: int | None = Field(None, ge=1, le=64 * 1024 * 1024,
                                 description="the disk's size; null: the image's own")
    timeout_s: float = Field(600.0, gt=0, le=366 * 86400,
                             description="closed this long from now unless extended")
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=64)
    tenant: str | None = Field(None, max_length=64, description="admins only: for whom")
    wait_s: float = Field(30.0, ge=0, le=600,
                          description="how long to wait for room when the fleet is full")


class Sandbox(BaseModel):
    id: str
    tenant: str
    image: str
    cpus: int
    mem_mib: int
    disk_mib: int | None
    state: Literal["open", "closed"]
    created_at: float
    expires_at: float
    closed_at: float | None
    close_reason: str | None
    metadata: dict[str, str]
    request_id: str
    key_id: str
    host: str | None = Field(None, description="where it runs (admins only)")


class SandboxList(BaseModel):
    items: list[Sandbox]
    next_cursor: str | None


class Timeout(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    timeout_s: float = Field(gt=0, le=366 * 86400, description="closed this long from now")


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    argv: list[Arg] = Field(min_length=1, max_length=4096, examples=[["python3", "-V"]])
    env: dict[EnvKey, Arg] = Field(default_factory=dict, max_length=1024)
    cwd: str | None = Field(None, max_length=4096, description="absolute; default /root")
    stdin: str | None = Field(None, max_length=MAX_STDIN_CHARS, description="as UTF-8")
    stdin_b64: str | None = Field(None, max_length=MAX_STDIN_CHARS * 4 // 3 + 4,
                                  description="raw bytes, base64")
    timeout_s: float | None = Field(None, gt=0, le=MAX_EXEC_S)
    encoding: Encoding | None = Field(None, description="of stdout and stderr: text (UTF-8, "
                                      "invalid bytes as U+FFFD) or base64 (lossless)")
    secrets: list[SecretName] = Field(default_factory=list, max_length=64, description=(
        "the tenant's secrets to expose as environment variables of the same names, where "
        "its policy allows; their values are masked in output"))

    @model_validator(mode="after")
    def _one_stdin(self) -> ExecBody:
        if self.stdin is not None and self.stdin_b64 is not None:
            raise ValueError("give stdin or stdin_b64, not both")
        return self


class ExecResult(BaseModel):
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    encoding: Encoding
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_s: float


class ExecExit(BaseModel):
    """The `exit` event of a streamed command: its result without the output."""

    exit_code: int | None
    signal: int | None
    encoding: Encoding
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_s: float


# ---- shared by the sandbox routes ------------------------------------------------------------
def book(request: Request) -> SandboxBook:
    found: SandboxBook = request.app.state.sandboxes
    return found


def seen_by(who: Principal) -> str | None:
    """The tenant whose sandboxes the caller sees; None: all (an admin)."""
    return None if who.admin else who.tenant


def sandbox_json(rec: SandboxRecord, who: Principal) -> Sandbox:
    data = rec.to_json()
    data["host"] = rec.host if who.admin else None
    data.pop("vm", None)
    return Sandbox(**data)


def bad_path(path: str, what: str = "path") -> Problem | None:
    why = guest_path_problem(path)
    return None if why is None else Problem(400, "bad-path", f"{what} {path[:200]!r} is "
                                            f"refused: {why}")


def check_path(path: str, what: str = "path") -> str:
    problem = bad_path(path, what)
    if problem is not None:
        raise problem
    return path


async def open_box(sid: SandboxId, who: Caller, request: Request) -> SandboxRecord:
    """The caller's open sandbox to start work in (a command, a file written): 404 otherwise,
    Frozen under a kill switch on the sandbox itself."""
    rec = open_record(request, sid, who)
    frozen_sandbox(request, sid, "new work")
    return rec


def open_record(request: Request, sid: str, who: Principal) -> SandboxRecord:
    """The caller's open sandbox (404 otherwise), from one read of the ledger."""
    rec = book(request).get(sid, seen_by(who))
    if rec.state != "open":
        raise Problem(404, "not-found", f"sandbox {sid!r} is closed: {rec.close_reason}")
    if rec.vm is None:  # granted, its host still opening the VM (its creation not answered)
        raise Problem(503, "unavailable", f"sandbox {sid!r} is still being opened on its "
                      "host; try again in a moment", headers={"Retry-After": "1"})
    return rec


async def readable_box(sid: SandboxId, who: Reader, request: Request) -> SandboxRecord:
    return open_record(request, sid, who)


OpenBox = Annotated[SandboxRecord, Depends(open_box)]
ReadableBox = Annotated[SandboxRecord, Depends(readable_box)]


async def gone(request: Request, rec: SandboxRecord, err: SandboxGone) -> Problem:
    """Its host no longer holds it: closed in the scheduler, and the 404 that says so."""
    with contextlib.suppress(TryfleetError):  # else its timeout or its host's loss ends it
        why = f"gone from its host: {err}"
        await auditing.sandbox_closing(auditing.call_of(request), rec, why)
        await request.app.state.fleet.sched("close_sandbox", rec.id, None, why)
    return Problem(404, "not-found", f"sandbox {rec.id!r} is gone: {err}")


async def on_node(request: Request, rec: SandboxRecord, method: str, *args: Any) -> Any:
    """A call to the node agent holding the sandbox (its id goes first)."""
    try:
        return await request.app.state.fleet.node(rec.host, method, rec.id, *args)
    except SandboxGone as err:
        raise await gone(request, rec, err) from None


def encode(data: bytes, encoding: Encoding) -> str:
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ExecJob:
    request: ExecRequest
    encoding: Encoding
    secrets: tuple[str, ...] = ()

    async def for_box(self, request: Request, who: Principal, box: SandboxRecord
                      ) -> ExecRequest:
        """The command with the secrets it names in its env (policy checked)."""
        if not self.secrets:
            return self.request
        env = await expose(request, who, box.tenant, self.secrets, self.request.env,
                           f"sandbox {box.id}")
        return dataclasses.replace(self.request, env=env)


def utf8(what: str, *values: str) -> None:
    """Text that cannot be UTF-8 (lone surrogates, from JSON escapes) refused (400)."""
    try:
        for v in values:
            v.encode("utf-8")
    except UnicodeEncodeError:
        raise Problem(400, "bad-request", f"{what} must be valid Unicode text (no lone "
                      "surrogates)") from None


async def exec_job(body: ExecBody, encoding: Annotated[Encoding | None, Query(
        description="text or base64; the body's `encoding` wins")] = None) -> ExecJob:
    """The command as the node takes it; a bad cwd or stdin_b64 refused (400) before it runs
    (and before a stream starts)."""
    utf8("argv, env and cwd", *body.argv, *body.env, *body.env.values(), body.cwd or "")
    if body.cwd is not None:
        check_path(body.cwd, "cwd")
    stdin: bytes | None = None
    if body.stdin_b64 is not None:
        try:
            stdin = base64.b64decode(body.stdin_b64, validate=True)
        except (binascii.Error, ValueError):
            raise Problem(400, "bad-request", "stdin_b64 is not valid base64") from None
    elif body.stdin is not None:
        stdin = body.stdin.encode("utf-8", "replace")
    req = ExecRequest(tuple(body.argv), tuple(sorted(body.env.items())), body.cwd, stdin,
                      body.timeout_s)
    return ExecJob(request=req, encoding=body.encoding or encoding or "text",
                   secrets=tuple(body.secrets))


Job = Annotated[ExecJob, Depends(exec_job)]


async def exposed(job: Job, box: OpenBox, who: Caller, request: Request) -> ExecRequest:
    """The command with its secrets, checked as a dependency: a refusal is a problem
    before a stream starts, never an error event in it."""
    return await job.for_box(request, who, box)


Exposed = Annotated[ExecRequest, Depends(exposed)]


# ---- routes: the sandboxes -------------------------------------------------------------------
@router.post("", status_code=201, summary="Open a sandbox",
             responses=documented(400, 401, 403, 404, 422, 429, 503))
async def create(body: SandboxCreate, who: Caller, request: Request) -> Sandbox:
    utf8("metadata", *body.metadata, *body.metadata.values())
    rec = await open_for(request, who, tenant_of(who, body.tenant), body.image, body.cpus,
                         body.mem_mib, body.disk_mib, body.timeout_s, body.metadata,
                         body.wait_s)
    return sandbox_json(rec, who)


async def open_for(request: Request, who: Principal, tenant: str, image: str, cpus: int,
                   mem_mib: int, disk_mib: int | None, timeout_s: float,
                   metadata: dict[str, str], wait_s: float) -> SandboxRecord:
    """A sandbox opened for `tenant` by the caller: its policy checked here (PolicyDenied),
    its quotas in the scheduler, atomically (QuotaExceeded); recorded with the caller's key
    and the request's id. Its network is the policy's alone (egress rules, or none)."""
    def allowed(policy: TenantPolicy) -> None:
        policy.check_interactive()
        policy.check(image=image, cpus=cpus, mem_mib=mem_mib, disk_mib=disk_mib,
                     timeout_s=timeout_s, what="sandbox")

    policy = await enforce(request, who, tenant, allowed)
    limits = {"max_sandboxes": policy.max_sandboxes,
              "max_vcpus_in_use": policy.max_vcpus_in_use,
              "max_mem_mib_in_use": policy.max_mem_mib_in_use}
    async with auditing.policy_checked(auditing.call_of(request), tenant):  # its quotas
        got = await request.app.state.fleet.sched(
            "open_sandbox", tenant, image, cpus, mem_mib, disk_mib, timeout_s, metadata,
            who.key_id, request.state.request_id, limits, wait_s,
            list(policy.egress_rules()))
    return SandboxRecord(**got)


@router.get("", summary="List sandboxes", responses=documented(400, 401, 403, 422))
async def list_sandboxes(
        who: Reader, request: Request,
        state: Literal["open", "closed", "all"] = "open",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=32)] = None,
        tenant: Annotated[str | None, Query(max_length=64,
                                            description="admins: one tenant's")] = None,
) -> SandboxList:
    scope = tenant_of(who, tenant) if tenant is not None else seen_by(who)
    items, nxt = book(request).page(scope, state, limit, cursor)
    return SandboxList(items=[sandbox_json(r, who) for r in items], next_cursor=nxt)


@router.get("/{sid}", summary="One sandbox", responses=NOT_FOUND)
async def get(sid: SandboxId, who: Reader, request: Request) -> Sandbox:
    return sandbox_json(book(request).get(sid, seen_by(who)), who)


@router.post("/{sid}/timeout", summary="Set its timeout: closed timeout_s from now",
             responses=documented(401, 403, 404, 422, 503))
async def extend(sid: SandboxId, body: Timeout, who: Caller, request: Request) -> Sandbox:
    return sandbox_json(await extend_for(request, who, sid, body.timeout_s), who)


async def extend_for(request: Request, who: Principal, sid: str,
                     timeout_s: float) -> SandboxRecord:
    """The caller's sandbox closed timeout_s from now (within its tenant's max_timeout_s)."""
    rec = book(request).get(sid, seen_by(who))
    def allowed(policy: TenantPolicy) -> None:
        if timeout_s > policy.max_timeout_s:
            raise PolicyDenied(f"sandbox: timeout_s {timeout_s:g} is over this tenant's "
                               f"max_timeout_s = {policy.max_timeout_s:g}", "max_timeout_s")

    await enforce(request, who, rec.tenant, allowed)
    got = await request.app.state.fleet.sched("extend_sandbox", sid, timeout_s, seen_by(who))
    return SandboxRecord(**got)


@router.delete("/{sid}", status_code=204, summary="Close it (again: 204 again)",
               responses=NOT_FOUND)
async def delete(sid: SandboxId, who: Caller, request: Request) -> Response:
    rec = book(request).get(sid, seen_by(who))  # another tenant's: 404 without asking further
    if rec.state == "open":
        await auditing.sandbox_closing(auditing.call_of(request), rec, "closed by request")
    await request.app.state.fleet.sched("close_sandbox", sid, seen_by(who))
    return Response(status_code=204)


# ---- routes: commands ------------------------------------------------------------------------
@router.post("/{sid}/exec", summary="Run a command; its result once it ended",
             responses=documented(400, 401, 403, 404, 422, 503))
async def exec_(job: Job, box: OpenBox, req: Exposed, request: Request) -> ExecResult:
    cmd = await exec_started(request, box, req)
    try:
        r = unpack(ExecReply, await on_node(request, box, "sandbox_exec", pack(req)))
    except BaseException as err:
        cmd.ended(None, error=f"{type(err).__name__}: {err}"[:1000])
        raise
    cmd.ended(r.exit_code, r.signal, duration_s=r.duration_s, timed_out=r.timed_out,
              stdout=Digest.of(r.stdout), stderr=Digest.of(r.stderr),
              stdout_truncated=r.stdout_truncated, stderr_truncated=r.stderr_truncated)
    values = mask_values(request, box.tenant)
    return ExecResult(exit_code=r.exit_code, signal=r.signal,
                      stdout=encode(mask(r.stdout, values, r.stdout_truncated), job.encoding),
                      stderr=encode(mask(r.stderr, values, r.stderr_truncated), job.encoding),
                      encoding=job.encoding,
                      stdout_truncated=r.stdout_truncated,
                      stderr_truncated=r.stderr_truncated, timed_out=r.timed_out,
                      duration_s=r.duration_s)


@router.post("/{sid}/exec/stream", response_class=EventSourceResponse,
             summary="Run a command; its output as server-sent events",
             description="Events: `started` {sandbox, argv}; `stdout` and `stderr` {data} as "
             "the output comes (text or base64 per `encoding`); `exit` (the result without "
             "the output); `error` (a problem) if it fails midway. Comments keep a silent "
             "stream alive.", responses=documented(400, 401, 403, 404, 422, 503))
async def exec_stream(job: Job, box: OpenBox, request: Request, req: Exposed
                      ) -> AsyncIterator[ServerSentEvent]:
    cmd = await exec_started(request, box, req)
    yield ServerSentEvent(event="started", data={"sandbox": box.id, "argv": list(req.argv)})
    text = job.encoding == "text"
    decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]
    maskers = stream_maskers(request, box.tenant)
    exec_id, ended = secrets.token_hex(8), False
    try:
        async for raw in request.app.state.fleet.node_stream(
                box.host, "sandbox_exec_stream", box.id, pack(req), exec_id):
            chunk = unpack(ExecChunk, raw)
            if chunk.reply is not None:
                ended = True
                _ended(cmd, chunk.reply)
                for n, decoder in enumerate(decoders):
                    tail = maskers[n].flush()
                    rest = decoder.decode(tail, final=True) if text else encode(tail,
                                                                                "base64")
                    if rest:
                        yield ServerSentEvent(event=("stdout", "stderr")[n],
                                              data={"data": rest})
                yield ServerSentEvent(event="exit", data=_exit(chunk.reply, job.encoding))
                return
            if chunk.stream in (1, 2):
                cmd.output(chunk.stream, chunk.data)
                shown = maskers[chunk.stream - 1].feed(chunk.data)
                data = decoders[chunk.stream - 1].decode(shown) if text \
                    else encode(shown, "base64")
                if data:
                    yield ServerSentEvent(event=("stdout", "stderr")[chunk.stream - 1],
                                          data={"data": data})
    except SandboxGone as err:
        ended = True
        cmd.ended(None, error=f"the sandbox is gone: {err}")
        yield ServerSentEvent(event="error", data=problems.body(
            request, await gone(request, box, err)))
    except TryfleetError as err:
        ended = True
        cmd.ended(None, error=str(err)[:1000])
        yield ServerSentEvent(event="error", data=problems.body(request,
                                                                problems.of_error(err)))
    finally:
        if not ended:  # the client went away: the command goes too (in the background,
            cmd.ended(None, error="the client went away: the command was stopped")
            detach(request.app.state.fleet.node(  # since this task is being cancelled)
                box.host, "sandbox_exec_cancel", box.id, exec_id))


async def exec_started(request: Request, box: SandboxRecord,
                       req: ExecRequest) -> auditing.Command:
    """exec.start of a command of /v1 (and MCP's run_command), before it runs."""
    return await auditing.command_started(auditing.call_of(request), box, req.argv,
                                          cwd=req.cwd, user=req.user, env=req.env)


def _ended(cmd: auditing.Command, r: ExecReply) -> None:
    cmd.ended(r.exit_code, r.signal, duration_s=r.duration_s, timed_out=r.timed_out,
              stdout_truncated=r.stdout_truncated, stderr_truncated=r.stderr_truncated)


_detached: set[asyncio.Task[Any]] = set()


def detach(coro: Any) -> None:
    """Run coro to its end whatever happens to the request that started it."""
    task = asyncio.get_running_loop().create_task(coro)
    _detached.add(task)
    task.add_done_callback(_detached.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning


def _exit(r: ExecReply, encoding: Encoding) -> ExecExit:
    return ExecExit(exit_code=r.exit_code, signal=r.signal, encoding=encoding,
                    stdout_truncated=r.stdout_truncated, stderr_truncated=r.stderr_truncated,
                    timed_out=r.timed_out, duration_s=r.duration_s)


__all__ = ["ExecBody", "ExecResult", "Sandbox", "SandboxCreate", "SandboxList", "detach",
           "extend_for", "open_for", "router"]
