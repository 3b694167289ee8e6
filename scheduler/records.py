"""What users submit and get back, and the states in between. Validated here, at the edge."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tryfleet.errors import BadRequest
from tryfleet.wire import IterationSpec
from tryfleet.wire import State as Terminal

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Iteration ids and suite names are a tenant's own: two tenants may both use "t1". Inside the
# scheduler an iteration (and a suite) is known by its key, "tenant/name": names never hold a
# "/", so a key names one tenant's thing and nothing else.
KEY_SEP = "/"


class Phase(enum.StrEnum):
    QUEUED = "QUEUED"
    PLACED = "PLACED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    INFRA_ERROR = "INFRA_ERROR"

    @property
    def terminal(self) -> bool:
        return self.value in Terminal.__members__


TERMINAL = tuple(p.value for p in Phase if p.terminal)
IN_FLIGHT = (Phase.PLACED.value, Phase.RUNNING.value)
ACTIVE = (Phase.QUEUED.value, *IN_FLIGHT)  # not ended yet


class InvalidIteration(BadRequest):
    """An iteration as given can never run; the message says which field and why."""


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise InvalidIteration(f"{kind} {value!r} must be 1-128 letters, digits, '.', '_' or '-'")
    return value


def qualified(tenant: str, name: str) -> str:
    """The scheduler's key of a tenant's iteration id or suite name."""
    return f"{tenant}{KEY_SEP}{name}"


def unqualified(key: str) -> tuple[str, str]:
    """(tenant, name) of a key made by qualified()."""
    tenant, _, name = key.partition(KEY_SEP)
    return tenant, name


@dataclass(frozen=True, slots=True)
class Iteration:
    """One try: a fresh VM from `image`, `files` written, `command` run, the VM thrown away."""

    image: str
    command: tuple[str, ...]
    files: Mapping[str, str | bytes] = field(default_factory=dict)  # guest path -> content
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 600.0
    cpus: int = 1
    mem_mib: int = 512
    disk_mib: int | None = None
    limits: tuple[str, ...] = ()  # shared resources held while running, e.g. ("ci-db",)
    retries: int = 0  # re-runs of a failing command (infrastructure errors retry anyway)
    priority: int = 0
    cwd: str | None = None
    id: str | None = None
    # the tenant's secrets exposed as environment variables: names only, their values are
    # read on the head when an attempt starts (never in the ledger)
    secrets: tuple[str, ...] = ()
    # egress allowlist rules, set by the gateway from the tenant's policy (never by the
    # caller); kept in the ledger with the rest, so every attempt of it gets the same
    egress: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "egress", tuple(self.egress))
        if not all(isinstance(r, str) and r for r in self.egress):
            raise InvalidIteration("egress must be a list of \"HOST:PORT\" rules")
        object.__setattr__(self, "limits", tuple(self.limits))
        object.__setattr__(self, "secrets", tuple(self.secrets))
        if not all(isinstance(n, str) and n for n in self.secrets):
            raise InvalidIteration("secrets must be a list of secret names")
        if not self.command or not all(isinstance(a, str) for a in self.command):
            raise InvalidIteration("command must be a non-empty list of strings (argv)")
        check_name("image", self.image)
        for path, text in dict(self.files).items():
            if not isinstance(path, str) or not path.startswith("/"):
                raise InvalidIteration(f"files: guest path {path!r} must be absolute")
            if not isinstance(text, (str, bytes)):
                raise InvalidIteration(f"files[{path!r}] must be text (str) or bytes, "
                                       f"got {type(text).__name__}")
        for key, value in dict(self.env).items():
            if not isinstance(key, str) or not key or "=" in key or not isinstance(value, str):
                raise InvalidIteration(f"env entry {key!r} must be a name and a string value")
        sizes: tuple[tuple[str, Any, int], ...] = (
            ("cpus", self.cpus, 1), ("mem_mib", self.mem_mib, 128), ("retries", self.retries, 0))
        for name, value, low in sizes:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidIteration(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise InvalidIteration(f"timeout_s must be a positive number, got {self.timeout_s!r}")
        for limit in self.limits:
            check_name("limit", limit)
        if self.id is not None:
            check_name("id", self.id)

    def to_wire(self) -> dict[str, Any]:
        return {
            "image": self.image, "command": list(self.command), "files": dict(self.files),
            "env": dict(self.env), "timeout_s": float(self.timeout_s), "cpus": self.cpus,
            "mem_mib": self.mem_mib, "disk_mib": self.disk_mib, "limits": list(self.limits),
            "retries": self.retries, "priority": self.priority, "cwd": self.cwd, "id": self.id,
            **({"secrets": list(self.secrets)} if self.secrets else {}),
            **({"egress": list(self.egress)} if self.egress else {}),
        }

    def to_spec(self) -> IterationSpec:
        """The iteration as its host runs it (files as UTF-8 text, as they were given)."""
        return IterationSpec(
            image=self.image, argv=self.command, env=tuple(dict(self.env).items()),
            cwd=self.cwd, put=tuple((path, text.encode() if isinstance(text, str) else text)
                                    for path, text in dict(self.files).items()),
            timeout_s=float(self.timeout_s), cpus=self.cpus, mem_mib=self.mem_mib,
            disk_mib=self.disk_mib, egress=self.egress)

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Iteration:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidIteration(f"unknown field(s): {', '.join(sorted(unknown))}")
        try:
            return cls(**dict(data))
        except TypeError as err:
            raise InvalidIteration(str(err)) from err


@dataclass(frozen=True, slots=True)
class Row:
    """An iteration as the ledger holds it: what was submitted and where it stands. `id` is the
    tenant's own id; `key` the scheduler's (unique across tenants)."""

    id: str
    seq: int
    tenant: str
    suite: str
    trace_id: str
    priority: int
    iteration: Iteration
    limits: tuple[str, ...]
    state: str
    attempt: int
    max_attempts: int
    runs_left: int
    host: str | None
    cancel_requested: bool
    infra_tries: int = 0  # attempts that ended in an infrastructure error
    request_id: str = ""  # the API request that submitted it
    key_id: str = ""  # the API key that submitted it
    key: str = ""  # the scheduler's key of it: qualified(tenant, id) unless given

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", qualified(self.tenant, self.id))

    @property
    def suite_key(self) -> str:
        """The scheduler's key of its suite (suites, like ids, are per tenant)."""
        return qualified(self.tenant, self.suite)


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    state: str
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: float | None
    ended_at: float | None
    duration_s: float | None
    attempts: int
    host: str | None
    trace_id: str
    suite: str
    tenant: str
    error: str | None = None
    request_id: str = ""
    key_id: str = ""
    submitted_at: float | None = None
    end_seq: int | None = None  # the cursor of its ending (ended_since), once it has ended
    seq: int | None = None  # its place in submission order (a listing's cursor)

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of an iteration on one host. outcome: RETRIED (it went back to the queue), a
    terminal state, or None while it runs."""

    iteration_id: str
    attempt: int
    host: str
    placed_at: float
    ended_at: float | None = None
    outcome: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class IterationDetail:
    """An iteration as the ledger has it now (its output once it has ended) and its attempts."""

    result: Result
    attempts: tuple[Attempt, ...]

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result.to_json(), "attempts": [a.to_json() for a in self.attempts]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IterationDetail:
        return cls(Result(**data["result"]), tuple(Attempt(**a) for a in data["attempts"]))


@dataclass(frozen=True, slots=True)
class LiveOutput:
    """An iteration's output past the offsets asked for, as bytes: live from its host while it
    runs, from the ledger once it has ended (then `done`). `attempt` is the attempt the bytes
    belong to: a retry starts its output again from offset 0."""

    stdout: bytes
    stderr: bytes
    done: bool
    state: str
    attempt: int
    host: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}
