"""What the scheduler's pure core (core.py) takes in and gives out: events (what happened) and
actions (what the shell must do), small frozen records. Every id in them is an iteration's key
(its tenant/id) or a suite's key, unique across tenants.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tryfleet.wire import Outcome
from tryfleet.wire import State as Ended

from .placement import Demand, HostView
from .records import Row
from .switches import Level, Switch


@dataclass(slots=True)
class Lease:
    host: str
    demand: Demand
    expires_at: float
    tenant: str
    key_id: str = ""  # the API key that opened it


# ---- events ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Submitted:
    """Rows the ledger recorded (new ones QUEUED; known ids as they stand)."""

    rows: tuple[Row, ...]
    suite: str = ""  # the suite key (Row.suite_key)
    created_at: float = 0.0  # the suite's creation time and wall budget, if it has one
    max_wall_s: float | None = None


@dataclass(frozen=True, slots=True)
class Recovered:
    """After a (re)start: every row the ledger holds that has not ended, the suites with
    wall budgets as (suite key, created_at, max_wall_s), the sandboxes' leases by id, and the
    kill switches in force."""

    rows: tuple[Row, ...]
    suites: tuple[tuple[str, float, float], ...] = ()
    leases: tuple[tuple[str, Lease], ...] = ()
    switches: tuple[Switch, ...] = ()


@dataclass(frozen=True, slots=True)
class HostsSeen:
    """The usable hosts as their node agents last reported them."""

    views: tuple[HostView, ...]


@dataclass(frozen=True, slots=True)
class HostAttempts:
    """The attempts a host knows of (after a restart of either side); None: it cannot be asked."""

    host: str
    known: frozenset[tuple[str, int]] | None


@dataclass(frozen=True, slots=True)
class OutcomesCollected:
    host: str
    outcomes: tuple[Outcome, ...]


@dataclass(frozen=True, slots=True)
class HostLost:
    host: str
    why: str


class Scope(enum.StrEnum):
    ITERATION = "iteration"
    SUITE = "suite"
    TENANT = "tenant"
    EVERYTHING = "everything"


@dataclass(frozen=True, slots=True)
class CancelRequested:
    scope: Scope
    name: str = ""  # the iteration key, suite key or tenant; empty for EVERYTHING
    reason: str = "cancelled by request"


@dataclass(frozen=True, slots=True)
class Quota:
    """A tenant's aggregate limits on what it holds at once, its open sandboxes and running
    iterations together (None: no limit)."""

    max_sandboxes: int | None = None
    max_vcpus_in_use: int | None = None
    max_mem_mib_in_use: int | None = None


@dataclass(frozen=True, slots=True)
class LeaseOpened:
    """Capacity for an interactive sandbox, until expires_at (wall clock), within the
    tenant's quota."""

    lease_id: str
    demand: Demand
    expires_at: float
    tenant: str = ""
    quota: Quota = Quota()
    key_id: str = ""


@dataclass(frozen=True, slots=True)
class LeaseExtended:
    lease_id: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class LeaseClosed:
    lease_id: str


@dataclass(frozen=True, slots=True)
class HostSandboxes:
    """The sandboxes a host holds open (asked after a restart of either side); None: it
    cannot say."""

    host: str
    known: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class SwitchOn:
    """An admin flipped a kill switch (recorded in the ledger first); it replaces the one in
    force on the same target, if any."""

    switch: Switch


@dataclass(frozen=True, slots=True)
class SwitchOff:
    """An admin lifted the switch on (level, target)."""

    level: Level
    target: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes (wall clock, seconds since the epoch): budgets and leases expire, and a
    scheduling pass admits and places what can start now."""

    now: float


Event = (Submitted | Recovered | HostsSeen | HostAttempts | OutcomesCollected | HostLost
         | CancelRequested | LeaseOpened | LeaseExtended | LeaseClosed | HostSandboxes
         | SwitchOn | SwitchOff | Tick)


# ---- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Launch:
    id: str
    attempt: int
    host: str
    row: Row


@dataclass(frozen=True, slots=True)
class RecordPlacements:
    """Write these attempts as started on their hosts, all in one transaction."""

    launches: tuple[Launch, ...]


@dataclass(frozen=True, slots=True)
class StartOnHost:
    host: str
    launches: tuple[Launch, ...]


@dataclass(frozen=True, slots=True)
class StopOnHost:
    host: str
    attempts: tuple[tuple[str, int], ...]
    settled: bool = False  # ended here already (a killed host's work, retried elsewhere)


@dataclass(frozen=True, slots=True)
class StopEverywhere:
    """The kill switch: every host stops everything, warm pools included."""


@dataclass(frozen=True, slots=True)
class MarkCancelled:
    """Record that these in-flight iterations were asked to stop (so a restart knows)."""

    ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Finish:
    """Commit the terminal state of `attempt`, or (queued) of an iteration waiting in the
    queue after `attempt` attempts."""

    id: str
    attempt: int
    state: Ended
    error: str | None = None
    outcome: Outcome | None = None
    queued: bool = False


@dataclass(frozen=True, slots=True)
class Requeue:
    """Back to the queue for another attempt, with the budget left."""

    id: str
    attempt: int
    error: str
    runs_left: int
    infra_tries: int


@dataclass(frozen=True, slots=True)
class Abandon:
    """A queued iteration no host can ever take: INFRA_ERROR without an attempt."""

    id: str
    why: str


@dataclass(frozen=True, slots=True)
class LeaseGranted:
    lease_id: str
    host: str


@dataclass(frozen=True, slots=True)
class LeaseRefused:
    lease_id: str
    never: bool  # True: no host could ever take it; False: no room now
    why: str


@dataclass(frozen=True, slots=True)
class LeaseOverQuota:
    """Refused: the tenant would hold more than `limit` allows (its value)."""

    lease_id: str
    limit: str  # max_sandboxes, max_vcpus_in_use or max_mem_mib_in_use
    value: int
    why: str


@dataclass(frozen=True, slots=True)
class LeaseFrozen:
    """Refused: a kill switch covers the tenant, the key or everything."""

    lease_id: str
    switch: Switch


@dataclass(frozen=True, slots=True)
class CloseSandbox:
    """A lease ended without its owner closing it (expired, or its host was lost)."""

    lease_id: str
    host: str
    why: str


Action = (RecordPlacements | StartOnHost | StopOnHost | StopEverywhere | MarkCancelled
          | Finish | Requeue | Abandon | LeaseGranted | LeaseRefused | LeaseOverQuota
          | LeaseFrozen | CloseSandbox)


__all__ = [
    "Abandon",
    "Action",
    "CancelRequested",
    "CloseSandbox",
    "Event",
    "Finish",
    "HostAttempts",
    "HostLost",
    "HostSandboxes",
    "HostsSeen",
    "Launch",
    "Lease",
    "LeaseClosed",
    "LeaseExtended",
    "LeaseFrozen",
    "LeaseGranted",
    "LeaseOpened",
    "LeaseOverQuota",
    "LeaseRefused",
    "MarkCancelled",
    "OutcomesCollected",
    "Quota",
    "RecordPlacements",
    "Recovered",
    "Requeue",
    "Scope",
    "StartOnHost",
    "StopEverywhere",
    "StopOnHost",
    "Submitted",
    "SwitchOff",
    "SwitchOn",
    "Tick",
]
