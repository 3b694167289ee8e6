"""The JSON of iterations, batches, suites and the fleet: pydantic models with their sizes
bounded, strict types (a string is never taken for a number), no unknown fields, and the
conversions from what the ledger and the scheduler hold."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tryfleet.scheduler.records import Phase, Result

from ..encoding import Encoding, encode

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TENANT = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_BATCH = 10_000  # iterations in one request
MAX_ARGV = 1024
MAX_ARG_CHARS = 128 * 1024
MAX_FILES = 256
MAX_FILE_CHARS = 64 * 1024 * 1024  # the body as a whole is capped by the app (MAX_BODY_BYTES)
MAX_ENV = 256
MAX_TIMEOUT_S = 7 * 86400.0

Name = Annotated[str, Field(pattern=NAME, max_length=128)]
Tenant = Annotated[str, Field(pattern=TENANT, max_length=64, description="admin only")]
State = Literal["QUEUED", "PLACED", "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED",
                "INFRA_ERROR"]
assert set(State.__args__) == {p.value for p in Phase}  # type: ignore[attr-defined]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FileBytes(Strict):
    b64: str = Field(max_length=MAX_FILE_CHARS, description="the file's bytes, base64")

    @field_validator("b64")
    @classmethod
    def _decodes(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64") from None
        return value


class IterationIn(Strict):
    """One try: a fresh VM from `image`, `files` written, `command` run, the VM thrown away."""

    id: Name | None = Field(None, description="the tenant's own id; made up when absent")
    image: Name = Field(examples=["base"])
    command: list[Annotated[str, Field(max_length=MAX_ARG_CHARS)]] = Field(
        min_length=1, max_length=MAX_ARGV, examples=[["python3", "-c", "print(6*7)"]])
    files: dict[Annotated[str, Field(max_length=4096, pattern=r"^/")],
                Annotated[str, Field(max_length=MAX_FILE_CHARS)] | FileBytes] = Field(
        default_factory=dict, max_length=MAX_FILES,
        description="guest path -> text, or {\"b64\": bytes as base64}")
    env: dict[Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^=\x00]+$")],
              Annotated[str, Field(max_length=MAX_ARG_CHARS)]] = Field(
        default_factory=dict, max_length=MAX_ENV)
    timeout_s: float = Field(600.0, gt=0, le=MAX_TIMEOUT_S)
    cpus: int = Field(1, ge=1, le=1024)
    mem_mib: int = Field(512, ge=128, le=1 << 24)
    disk_mib: int | None = Field(None, ge=1, le=1 << 30)
    limits: list[Name] = Field(default_factory=list, max_length=16,
                               description="shared resources held while it runs (their sizes "
                                           "are set by admins)")
    retries: int = Field(0, ge=0, le=100, description="re-runs of a failing command")
    priority: int = Field(0, ge=-1_000_000, le=1_000_000)
    cwd: str | None = Field(None, max_length=4096)
    secrets: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]] = Field(
        default_factory=list, max_length=64, description="the tenant's secrets to expose as "
        "environment variables of the same names, where its policy allows; their values are "
        "masked in output")

    def to_wire(self) -> dict[str, Any]:
        """As the scheduler takes it (records.Iteration.to_wire)."""
        files = {path: base64.b64decode(v.b64) if isinstance(v, FileBytes) else v
                 for path, v in self.files.items()}
        return {**self.model_dump(exclude={"files"}), "files": files}


class OneIn(IterationIn):
    suite: Name = "default"
    tenant: Tenant | None = None


class BatchIn(Strict):
    suite: Name = "default"
    iterations: list[IterationIn] = Field(min_length=1, max_length=MAX_BATCH)
    max_wall_s: float | None = Field(None, gt=0, le=30 * 86400.0,
                                     description="the suite's wall-time budget")
    max_iterations: int | None = Field(None, ge=1, le=100_000_000,
                                       description="the most iterations the suite may hold")
    expect_limits: dict[Name, Annotated[int, Field(ge=0, le=1_000_000)]] | None = Field(
        None, max_length=16, description="the sizes the batch expects of the limits its "
        "iterations name: refused (400) unless each is the size in force. It sizes nothing: "
        "only admins do (PUT /v1/fleet/limits/NAME)")
    tenant: Tenant | None = None


class BatchOut(BaseModel):
    suite: str
    ids: list[str]
    request_id: str


class Attempt(BaseModel):
    attempt: int
    host: str | None = Field(description="admins only")
    placed_at: float
    ended_at: float | None
    outcome: str | None = Field(description="RETRIED, a terminal state, or null while it runs")
    error: str | None


class Iteration(BaseModel):
    id: str
    tenant: str
    suite: str
    state: State
    exit_code: int | None
    stdout_truncated: bool
    stderr_truncated: bool
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    duration_s: float | None
    attempt: int = Field(description="attempts made so far")
    host: str | None = Field(description="admins only")
    trace_id: str
    error: str | None
    request_id: str
    key_id: str
    end_cursor: str | None = Field(description="its place in the stream of endings (the "
                                                "`id:` of its `ended` event)")


class IterationFull(Iteration):
    stdout: str
    stderr: str
    encoding: Encoding
    attempts: list[Attempt]


class IterationPage(BaseModel):
    items: list[Iteration]
    next_cursor: str | None


class OutputOut(BaseModel):
    stdout: str
    stderr: str
    stdout_bytes: int = Field(description="raw bytes in stdout: add to out_offset")
    stderr_bytes: int = Field(description="raw bytes in stderr: add to err_offset")
    encoding: Encoding
    done: bool
    state: State
    attempt: int = Field(description="the attempt these bytes are of: a retry starts again at 0")


class CancelOut(BaseModel):
    queued_cancelled: int
    running_stopped: int


class SuiteOut(BaseModel):
    suite: str
    tenant: str
    created_at: float
    max_iterations: int | None
    max_wall_s: float | None
    counts: dict[str, int]
    total: int


class HostOut(BaseModel):
    host: str
    lost: bool
    pressured: bool
    cpus: int | None
    mem_mib: int | None
    accel: str | None
    running: int | None
    images: list[str] | None
    pressure: dict[str, float] | None
    vms: int | None = None  # VMs running there, pooled ones too


class LimitOut(BaseModel):
    size: int
    in_use: int


class FleetOut(BaseModel):
    pid: int | None = Field(None, description="the scheduler's process id")
    ledger: str | None = Field(None, description="the ledger's path on the head")
    hosts: list[HostOut]
    limits: dict[str, LimitOut]
    counts: dict[str, int]
    tenants: dict[str, dict[str, int]]
    in_flight: int
    as_of: float = Field(description="when the scheduler gave this answer (cached briefly)")


class FleetCancelIn(Strict):
    tenant: Tenant | None = Field(None, description="one tenant's iterations; absent: "
                                  "everything, every tenant's")


class LimitIn(Strict):
    value: int = Field(ge=0, le=1_000_000, description="how many may hold it at once")


class LimitSet(BaseModel):
    name: str
    value: int
    limits: dict[str, int]


def iteration(r: Result, admin: bool) -> Iteration:
    return Iteration(
        id=r.id, tenant=r.tenant, suite=r.suite, state=r.state,  # type: ignore[arg-type]
        exit_code=r.exit_code, stdout_truncated=r.stdout_truncated,
        stderr_truncated=r.stderr_truncated, submitted_at=r.submitted_at,
        started_at=r.started_at, ended_at=r.ended_at, duration_s=r.duration_s,
        attempt=r.attempts, host=r.host if admin else None, trace_id=r.trace_id,
        error=r.error, request_id=r.request_id, key_id=r.key_id,
        end_cursor=None if r.end_seq is None else str(r.end_seq))


def full(r: Result, out: tuple[bytes, bytes], attempts: list[dict[str, Any]],
         encoding: Encoding, admin: bool) -> IterationFull:
    return IterationFull(
        **iteration(r, admin).model_dump(), stdout=encode(out[0], encoding),
        stderr=encode(out[1], encoding), encoding=encoding,
        attempts=[Attempt(attempt=a["attempt"], host=a["host"] if admin else None,
                          placed_at=a["placed_at"], ended_at=a["ended_at"],
                          outcome=a["outcome"], error=a["error"]) for a in attempts])


def hosts_of(st: dict[str, Any]) -> list[HostOut]:
    """The hosts of the scheduler's status, as the API shows them."""
    return [HostOut(**{k: h.get(k) for k in HostOut.model_fields}) for h in st["hosts"]]


def limits_of(st: dict[str, Any]) -> dict[str, LimitOut]:
    """The shared-resource limits of the scheduler's status: each one's size and use."""
    in_use = st.get("limits_in_use", {})
    return {k: LimitOut(size=v, in_use=in_use.get(k, 0)) for k, v in st["limits"].items()}


def fleet(st: dict[str, Any], as_of: float) -> FleetOut:
    return FleetOut(
        pid=st.get("pid"), ledger=st.get("ledger"), hosts=hosts_of(st), limits=limits_of(st),
        counts=st["counts"], tenants=st.get("tenants", {}), in_flight=st["in_flight"],
        as_of=as_of)


__all__ = ["MAX_BATCH", "NAME", "TENANT", "Attempt", "BatchIn", "BatchOut", "CancelOut",
           "FleetCancelIn", "FleetOut", "HostOut", "Iteration", "IterationFull", "IterationIn",
           "IterationPage", "LimitIn", "LimitOut", "LimitSet", "OneIn", "OutputOut", "State",
           "SuiteOut", "fleet", "full", "hosts_of", "iteration", "limits_of"]
