"""/v1/switches: durable kill switches, for admins (scheduler/switches.py says what each level
and strength does). A switch holds across restarts of the scheduler and the gateway until an
admin lifts it; the listing says who flipped what, when and why.

    POST /v1/switches       {"level": "tenant", "target": "acme", "strength": "freeze",
                             "reason": "incident 42", "person": "ana@laptop"}
    POST /v1/switches/lift  {"level": "tenant", "target": "acme", "reason": "fixed"}
    DELETE /v1/switches/ID  lift switch ID
    GET /v1/switches        the switches in force (?history=true: every one, newest first)

Every flip and lift is recorded in the audit trail before it is carried out (none recorded:
503, nothing done). Killing a key also revokes it (for good: lifting the switch later does not
bring the key back). What a switch refuses is a 403 problem `frozen` naming the switch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tryfleet.errors import NotFound
from tryfleet.scheduler.sandboxes import SandboxBook
from tryfleet.scheduler.switch_book import SwitchBook
from tryfleet.scheduler.switches import Level

from ..auditing import call_of
from ..auth import Admin
from ..keys import KeyStore, Principal
from ..problems import documented
from .audit import trail
from .iteration_models import TENANT

router = APIRouter(prefix="/v1/switches", tags=["switches"])
LevelName = Literal["iteration", "sandbox", "suite", "tenant", "key", "host", "everything"]
PERSON = r"^[A-Za-z0-9._@+-]{1,200}$"
TARGET = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$"


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    level: LevelName
    target: str = Field("", max_length=256, description="the iteration id, sandbox id, suite, "
                        "tenant, key id or host; empty for everything", examples=["acme"])
    tenant: str | None = Field(None, pattern=TENANT, max_length=64, description="the tenant "
                               "of an iteration id or a suite (default: the one that has it)")
    reason: str = Field("", max_length=1000, examples=["incident 42: runaway agent"])
    person: str | None = Field(None, pattern=PERSON, description="who at the CLI (user@host), "
                               "recorded beside the admin key")

    @model_validator(mode="after")
    def _target_fits_level(self) -> Target:
        if self.level == "everything" and self.target:
            raise ValueError("a switch on everything takes no target")
        if self.level != "everything" and not self.target:
            raise ValueError(f"a {self.level} switch needs a target")
        if self.target and not _matches(TARGET, self.target):
            raise ValueError("target must be 1-256 letters, digits, '.', '_', ':' or '-'")
        if self.tenant is not None and self.level not in ("iteration", "suite"):
            raise ValueError("tenant qualifies an iteration or a suite only")
        return self


class FlipIn(Target):
    strength: Literal["freeze", "kill"] = Field("freeze", description="freeze: admit nothing "
                                                "new; kill: also destroy what runs now")


class SwitchOut(BaseModel):
    id: int
    level: LevelName
    target: str
    strength: Literal["freeze", "kill"]
    reason: str
    flipped_by: str = Field(description="key:<id>, and cli:<user>@<host> when a person said so")
    flipped_at: float = Field(description="seconds since the epoch")
    lifted_by: str | None
    lifted_at: float | None
    lift_reason: str | None
    active: bool


class FlipOut(BaseModel):
    switch: SwitchOut
    created: bool = Field(description="false: that switch was already in force")
    queued_cancelled: int = 0
    running_stopped: int = 0
    sandboxes_closed: int = 0
    key_revoked: bool = False


class SwitchList(BaseModel):
    items: list[SwitchOut]


def _matches(pattern: str, value: str) -> bool:
    return re.match(pattern, value) is not None


def _by(who: Principal, person: str | None) -> str:
    return f"key:{who.key_id}" + (f" cli:{person}" if person else "")


def _tenant_of(request: Request, body: Target) -> str:
    """The tenant the switch concerns (for the audit record), checking that a key, a tenant
    or a sandbox named exists (iterations, suites and hosts: the scheduler checks)."""
    keys: KeyStore = request.app.state.keys
    if body.level == "key":
        return keys.get(body.target).tenant  # NotFound
    if body.level == "tenant":
        if not keys.list(body.target):
            raise NotFound(f"no tenant {body.target!r}: it has no API key")
        return body.target
    if body.level == "sandbox":
        book: SandboxBook = request.app.state.sandboxes
        return book.get(body.target).tenant  # NotFound
    return body.tenant or ""


def _book(request: Request) -> SwitchBook:
    book: SwitchBook = request.app.state.switch_book
    return book


def frozen_sandbox(request: Request, sid: str, what: str) -> None:
    """Frozen when a switch is in force on sandbox `sid` itself: nothing new (`what`: a
    command, a file written) starts in it, while what runs there goes on. A tenant's, a key's
    or everything's freeze leaves work in open sandboxes alone."""
    found = _book(request).in_force(Level.SANDBOX, sid)
    if found is not None:
        raise found.refusal(f"{what} in sandbox {sid}")


async def _record(request: Request, action: str, who: Principal, tenant: str,
                  details: dict[str, Any]) -> None:
    """The audit record, before the act (AuditUnavailable: 503, nothing done)."""
    trail(request)  # a gateway without a trail flips nothing
    level, target = details["level"], details["target"]
    await call_of(request).record(action, tenant=tenant,
                                  sandbox=target if level == "sandbox" else "",
                                  host=target if level == "host" else "", details=details)


@router.get("", summary="The kill switches in force, or every one (admin)",
            responses=documented(401, 403, 422))
async def list_switches(who: Admin, request: Request,
                        history: Annotated[bool, Query(description="lifted ones too, newest "
                                                       "first")] = False) -> SwitchList:
    book = _book(request)
    got = book.history() if history else book.active()
    return SwitchList(items=[SwitchOut(**s.to_json()) for s in got])


@router.post("", summary="Flip a kill switch: freeze or kill (admin)",
             responses=documented(400, 401, 403, 404, 422, 503))
async def flip(body: FlipIn, who: Admin, request: Request, response: Response) -> FlipOut:
    """Freeze: nothing new is admitted under it (submissions and sandbox openings refused,
    queued iterations held, a host drained); what runs goes on. Kill: also cancel and stop the
    iterations it covers, close its sandboxes (a key is revoked too). 201 when new, 200 when
    that switch was already in force."""
    tenant = _tenant_of(request, body)
    details = {"level": body.level, "target": body.target, "tenant": body.tenant,
               "strength": body.strength, "reason": body.reason, "person": body.person}
    await _record(request, "switch.flip", who, tenant, details)
    got = await request.app.state.fleet.sched(
        "flip_switch", body.level, body.target, body.strength, body.reason,
        _by(who, body.person), body.tenant)
    revoked = False
    if body.level == "key" and body.strength == "kill":
        keys: KeyStore = request.app.state.keys
        revoked = keys.revoke(body.target, by=_by(who, body.person)).revoked_at is not None
    response.status_code = 201 if got["created"] else 200
    return FlipOut(**got, key_revoked=revoked)


async def _lift(request: Request, who: Principal, body: Target) -> SwitchOut:
    details = {"level": body.level, "target": body.target, "tenant": body.tenant,
               "reason": body.reason, "person": body.person}
    await _record(request, "switch.lift", who, body.tenant or
                  (body.target if body.level == "tenant" else ""), details)
    got = await request.app.state.fleet.sched("lift_switch", body.level, body.target,
                                              _by(who, body.person), body.reason, body.tenant)
    return SwitchOut(**got)


@router.post("/lift", summary="Lift the switch on a target (admin)",
             responses=documented(401, 403, 404, 422, 503))
async def lift(body: Target, who: Admin, request: Request) -> SwitchOut:
    """What it held starts again (a killed key stays revoked). 404 when no switch is in force
    on that target."""
    return await _lift(request, who, body)


@router.delete("/{switch_id:int}", summary="Lift switch ID (admin)",
               responses=documented(401, 403, 404, 422, 503))
async def lift_by_id(switch_id: Annotated[int, Path(ge=1)], who: Admin, request: Request,
                     reason: Annotated[str, Query(max_length=1000)] = "",
                     person: Annotated[str | None, Query(pattern=PERSON)] = None
                     ) -> SwitchOut:
    found = next((s for s in _book(request).active() if s.id == switch_id), None)
    if found is None:
        raise NotFound(f"no switch #{switch_id} in force")
    tenant, _, name = found.target.rpartition("/")  # an iteration's or suite's tenant/name
    body = Target(level=found.level.value, target=name if tenant else found.target,
                  tenant=tenant or None, reason=reason, person=person)
    return await _lift(request, who, body)


__all__ = ["FlipIn", "FlipOut", "SwitchList", "SwitchOut", "Target", "frozen_sandbox", "router"]
