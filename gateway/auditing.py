"""What the gateway writes to the audit trail, and when: one `Call` per API request.

    api.request   before the request acts: written with its first record (an exec's
                  exec.start: one transaction, one wait for the disk), or alone before it
                  calls the scheduler or a node, or before the first byte of its answer; with
                  the key's tenant and id once the key is checked, else tenant "" and actor
                  "anonymous" (a request refused without a valid key)
    ...           what the route does: sandbox.close, exec.start, file.write, policy.deny ...
    api.response  its status, with what became of its actions (exec.end), queued as the last
                  bytes of the answer leave (not waited for: nothing comes after it;
                  /v1/audit's reads wait for such records first)

Every record of a request carries its tenant, actor (`key:<id>`), request id and trace id (the
W3C `traceparent` header's, if the caller sent one). A record that must precede an action is
on disk before the action; when it cannot be written (AuditUnavailable) the action is refused,
and the request answers 503 "audit unavailable".

`AuditCalls` is the ASGI middleware that makes the Call of each request (request.state and a
context variable hold it); the routes reach it with `call_of(request)`; `FleetSettling` wraps
the app's fleet. A gateway built without an audit trail (`create_app(audit=None)`, for the
benchmark's comparison) records nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tryfleet import logs
from tryfleet.audit import (
    Audit,
    AuditUnavailable,
    Digest,
    Digester,
    command_details,
    command_outcome,
    command_result,
    file_details,
)
from tryfleet.audit.record import Entry
from tryfleet.errors import PolicyDenied, QuotaExceeded

from .keys import Principal

STATE_KEY = "audit_call"
UNAUDITED = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                       "/"})  # and the control room's files (UNAUDITED_PREFIX): no data
UNAUDITED_PREFIX = "/controlroom/"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_current: ContextVar[Call | None] = ContextVar("tryfleet_audit_call", default=None)


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C traceparent header; "" when there is none or it is malformed
    (or all zeros, which the spec makes invalid)."""
    m = _TRACEPARENT.match(traceparent.strip().lower())
    if m is None or m[1] == "0" * 32:
        return ""
    return m[1]


def route_of(scope: Scope) -> str:
    """The route template a request matched (`/v1/sandboxes/{sid}/exec`); its path if none."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else str(scope.get("path", ""))[:256]


@dataclass(slots=True)
class Call:
    """One API request as the audit trail sees it. `audit` None: nothing is recorded.

    api.request waits to be written with the request's first record (one transaction, one
    wait for the disk: an exec's api.request and exec.start), or alone before anything else
    leaves the gateway for it: a call to the scheduler or a node (`FleetSettling`) or the
    first byte of its answer (`AuditCalls`)."""

    audit: Audit | None
    request_id: str
    trace_id: str = ""
    method: str = ""
    scope: Scope | None = None
    tenant: str = ""
    actor: str = "anonymous"
    requested: bool = False  # api.request is on disk
    status: int | None = None
    responded: bool = False
    later: list[Entry] = field(default_factory=list)  # outcomes, written with api.response

    def _entry(self, action: str, fields: Mapping[str, Any]) -> Entry:
        return Entry.of(action, **{"tenant": self.tenant, "actor": self.actor,
                                   "request_id": self.request_id, "trace_id": self.trace_id,
                                   **fields})

    def _request_entry(self) -> list[Entry]:
        if self.requested:
            return []
        route = "" if self.scope is None else route_of(self.scope)
        return [self._entry("api.request", {"details": {"method": self.method,
                                                        "route": route}})]

    async def record(self, action: str, **fields: Any) -> None:
        """Append one record (after api.request, if not yet written) before the action it
        records; AuditUnavailable: refuse the action."""
        if self.audit is None:
            return
        await self.audit.arecord_many([*self._request_entry(), self._entry(action, fields)])
        self.requested = True

    async def settle(self) -> None:
        """api.request on disk (if it is not yet): before the request acts elsewhere."""
        if self.audit is None or self.requested:
            return
        await self.audit.arecord_many(self._request_entry())
        self.requested = True

    def afterwards(self, action: str, **fields: Any) -> None:
        """An outcome: written with api.response (or at once, outside a request)."""
        if self.audit is None:
            return
        entry = self._entry(action, fields)
        if self.scope is None:  # no response to wait for: on its own
            self.audit.record_queued([entry])
        else:
            self.later.append(entry)

    def admit(self, who: Principal) -> None:
        """The caller known: its tenant and key on every record of the request from now on
        (api.request among them, written with the first: see the class's docstring)."""
        self.tenant, self.actor = who.tenant, f"key:{who.key_id}"
        logs.add(tenant=who.tenant, key=who.key_id)  # and on its log lines

    def respond(self, status: int) -> None:
        """api.response, with the outcomes held back, in one transaction, queued as the
        answer's last bytes leave (not waited for: nothing comes after it)."""
        if self.audit is None or self.responded:
            return
        self.responded = True
        entries = [*self._request_entry(), *self.later,
                   self._entry("api.response", {"outcome": str(status),
                                                "details": {"status": status}})]
        self.requested, self.later = True, []
        # the answer is out already: a failure is logged (by the writer), nothing to refuse
        self.audit.record_queued(entries)


async def drained(audit: Audit | None) -> None:
    """Every record queued without waiting (api.response, exec.end) on disk, or failed: a
    read of the trail then sees what the answers before it did."""
    if audit is not None:
        with contextlib.suppress(AuditUnavailable):
            await audit.flushed()


class FleetSettling:
    """The app's fleet (FleetCalls), each call to the scheduler or a node made after the
    current request's api.request is on disk, so the records they make come after it."""

    def __init__(self, fleet: Any) -> None:
        self.fleet = fleet

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fleet, name)

    async def sched(self, method: str, *args: Any) -> Any:
        await _settle_current()
        return await self.fleet.sched(method, *args)

    async def node(self, host: str, method: str, *args: Any) -> Any:
        await _settle_current()
        return await self.fleet.node(host, method, *args)

    async def node_stream(self, host: str, method: str, *args: Any) -> AsyncIterator[bytes]:
        await _settle_current()
        async for item in self.fleet.node_stream(host, method, *args):
            yield item


async def _settle_current() -> None:
    call = _current.get()
    if call is not None:
        await call.settle()


def call_of(request: Any) -> Call:
    """The Call of a request (a FastAPI Request, or anything with .app and .state): the one
    the middleware made, else this task's, else a new one over the app's trail."""
    state = request.state
    found = getattr(state, STATE_KEY, None)
    if isinstance(found, Call):
        return found
    current = _current.get()
    if current is not None:
        return current
    call = Call(getattr(request.app.state, "audit", None),
                getattr(state, "request_id", "") or "")
    who = getattr(state, "principal", None)
    if isinstance(who, Principal):
        call.tenant, call.actor = who.tenant, f"key:{who.key_id}"
    setattr(state, STATE_KEY, call)
    return call


def current() -> Call | None:
    """The Call of the request this task serves, if any (MCP's key check has no request)."""
    return _current.get()


class AuditCalls:
    """ASGI middleware (inside RequestIds, which gives the id): a Call per HTTP request when
    the app has an audit trail (app.state.audit). An answer starts only once its api.request
    is on disk, and its last bytes queue api.response; an AuditUnavailable raised before an
    answer started, or met as it starts, answers 503 "audit unavailable" instead (and what
    the route sends after that raises, so that it goes no further)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        audit = getattr(getattr(scope.get("app"), "state", None), "audit", None)
        if scope["type"] != "http" or audit is None or scope["path"] in UNAUDITED or \
                scope["path"].startswith(UNAUDITED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        state = scope.setdefault("state", {})
        call = Call(audit, state.get("request_id", ""),
                    trace_id_of(headers.get(b"traceparent", b"").decode("latin-1")),
                    scope.get("method", ""), scope)
        state[STATE_KEY] = call
        token = _current.set(call)

        refused = False

        async def send_recorded(message: Message) -> None:
            nonlocal refused
            if refused:  # an answer replaced by 503: the route goes no further
                raise AuditUnavailable("audit unavailable: the answer was refused")
            if message["type"] == "http.response.start":
                try:  # nothing of an answer leaves before its request is on record
                    await call.settle()
                except AuditUnavailable as err:
                    refused, call.status = True, 503
                    await _unavailable(scope, send, str(err), state.get("request_id"))
                    return
                call.status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                call.respond(call.status or 0)
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        except Exception as err:
            if refused:  # what the route raised once its answer was replaced: answered
                return
            if not isinstance(err, AuditUnavailable) or call.status is not None:
                raise
            call.status = 503
            await _unavailable(scope, send, str(err), state.get("request_id"))
        finally:
            _current.reset(token)
            if not call.responded:  # the client went away first, or the app raised
                call.respond(call.status or 500)


async def _unavailable(scope: Scope, send: Send, detail: str, rid: str | None) -> None:
    from .problems import MEDIA_TYPE

    body = json.dumps({"type": "urn:tryfleet:problem:audit-unavailable",
                       "title": "Audit unavailable", "status": 503, "detail": detail,
                       "instance": scope.get("path"), "request_id": rid}).encode()
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", MEDIA_TYPE.encode()), (b"retry-after", b"5"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---- what routes record ----------------------------------------------------------------------
@dataclass(slots=True)
class Command:
    """One command run in a sandbox, between its exec.start and its exec.end."""

    call: Call
    sandbox: str
    tenant: str
    host: str
    started: float = field(default_factory=time.monotonic)
    out: Digester = field(default_factory=Digester)
    err: Digester = field(default_factory=Digester)

    def output(self, stream: int, data: bytes) -> None:
        (self.out if stream == 1 else self.err).update(data)

    def ended(self, exit_code: int | None, signal: int | str | None = None, *,
              duration_s: float | None = None, timed_out: bool = False,
              stdout: Digest | None = None, stderr: Digest | None = None,
              stdout_truncated: bool = False, stderr_truncated: bool = False,
              error: str = "") -> None:
        """exec.end: how it ended, and the digests of its output (of what was seen streamed
        unless given)."""
        took = time.monotonic() - self.started if duration_s is None else duration_s
        self.call.afterwards(
            "exec.end", tenant=self.tenant, sandbox=self.sandbox, host=self.host,
            outcome=command_outcome(exit_code, signal, timed_out),
            details=command_result(exit_code=exit_code, signal=signal, duration_s=took,
                                   stdout=stdout or self.out.digest(),
                                   stderr=stderr or self.err.digest(), timed_out=timed_out,
                                   stdout_truncated=stdout_truncated,
                                   stderr_truncated=stderr_truncated, error=error))


async def command_started(call: Call, box: Any, argv: tuple[str, ...] | list[str], *,
                          cwd: str | None = None, user: str | None = None,
                          env: Mapping[str, object] | tuple[tuple[str, str], ...] = (),
                          via: str = "") -> Command:
    """exec.start of a command in sandbox `box` (a SandboxRecord), before it runs; the
    Command to end it with. Environment values never reach the record: only names."""
    names = env if isinstance(env, Mapping) else [k for k, _ in env]
    details = command_details(list(argv), cwd=cwd, user=user, env=names)
    if via:
        details["via"] = via
    await call.record("exec.start", tenant=box.tenant, sandbox=box.id, host=box.host or "",
                      details=details)
    return Command(call, box.id, box.tenant, box.host or "")


@dataclass(frozen=True, slots=True)
class FileMove:
    """The records of one file written to or read from a sandbox: path, size and SHA-256."""

    call: Call
    box: Any  # the SandboxRecord
    via: str = ""

    def _fields(self, path: str, d: Digest, **more: Any) -> dict[str, Any]:
        if self.via:
            more["via"] = self.via
        return {"tenant": self.box.tenant, "sandbox": self.box.id,
                "host": self.box.host or "", "details": file_details(path, d, **more)}

    async def writing(self, path: str, d: Digest) -> None:
        """file.write, before the file appears at its path (its bytes are all in)."""
        await self.call.record("file.write", **self._fields(path, d))

    async def reading(self, path: str, d: Digest, whole: bool) -> None:
        """file.read, before its first bytes leave: the digest of all of it when `whole`,
        else of its size only (sha256 "": see `read_all`)."""
        fields = self._fields(path, d) if whole else self._fields(path, Digest(d.size_bytes,
                                                                               ""))
        await self.call.record("file.read", outcome="" if whole else "started", **fields)

    def read_all(self, path: str, d: Digest) -> None:
        """A file read in several chunks: what was sent, once all of it was."""
        self.call.afterwards("file.read", outcome="sent", **self._fields(path, d))


async def sandbox_closing(call: Call, box: Any, reason: str) -> None:
    """sandbox.close asked through the API, before the scheduler closes it."""
    await call.record("sandbox.close", tenant=box.tenant, sandbox=box.id, host=box.host or "",
                      details={"reason": reason})


@contextlib.asynccontextmanager
async def policy_checked(call: Call, tenant: str) -> AsyncIterator[None]:
    """A PolicyDenied raised inside, or a QuotaExceeded (the policy's quotas, which the
    scheduler checks), is recorded (policy.deny, naming the rule) and raised on."""
    try:
        yield
    except (PolicyDenied, QuotaExceeded) as err:
        rule = err.rule if isinstance(err, PolicyDenied) else err.limit
        await call.record("policy.deny", tenant=tenant, outcome=rule,
                          details={"rule": rule, "detail": str(err)[:1000]})
        raise


__all__ = ["STATE_KEY", "UNAUDITED", "UNAUDITED_PREFIX", "AuditCalls", "Call", "Command",
           "FileMove", "FleetSettling", "call_of", "command_started", "current", "drained",
           "policy_checked", "route_of", "sandbox_closing", "trace_id_of"]
