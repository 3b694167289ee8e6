"""Admission: which queued iterations may start now, in what order. Pure.

Strict priority first; within a priority, fair share across suites: the suite with the fewest
running iterations for its weight goes next, so one huge suite cannot starve many small ones,
and among suites running equally many, the one started least often so far, so that when there
are more suites than room they take turns instead of going one after another in submission
order. FIFO inside a suite. Named shared-resource limits (`ci-db=8`) and per-suite and per-tenant
concurrency caps hold fleet-wide. Host pressure is judged with hysteresis: a host that crossed
the high mark takes no new work until every reading is back under the low mark.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from .placement import Demand


@dataclass(frozen=True, slots=True)
class Candidate:
    id: str
    suite: str
    tenant: str
    priority: int
    seq: int
    limits: tuple[str, ...]
    demand: Demand


@dataclass(frozen=True, slots=True)
class Policy:
    limits: Mapping[str, int] = field(default_factory=dict)
    suite_caps: Mapping[str, int] = field(default_factory=dict)
    tenant_caps: Mapping[str, int] = field(default_factory=dict)
    default_suite_cap: int | None = None
    default_tenant_cap: int | None = None
    suite_weights: Mapping[str, float] = field(default_factory=dict)


class Usage:
    """Running (admitted, not finished) iterations by suite, tenant and shared resource, and
    how many each suite has started so far."""

    def __init__(self) -> None:
        self.suites: Counter[str] = Counter()
        self.tenants: Counter[str] = Counter()
        self.limits: Counter[str] = Counter()
        self.started: Counter[str] = Counter()

    def add(self, c: Candidate) -> None:
        self.suites[c.suite] += 1
        self.tenants[c.tenant] += 1
        self.started[c.suite] += 1
        for name in c.limits:
            self.limits[name] += 1

    def remove(self, c: Candidate, ran: bool = True) -> None:
        """c finished (or, with ran=False, never started after all)."""
        self.suites[c.suite] -= 1
        self.tenants[c.tenant] -= 1
        if not ran:
            self.started[c.suite] -= 1
        for name in c.limits:
            self.limits[name] -= 1
        if self.suites[c.suite] <= 0:
            del self.suites[c.suite]

    def prune(self, queued: Collection[str]) -> None:
        """Forget how often suites started once they have nothing running or queued."""
        for suite in [s for s in self.started if s not in self.suites and s not in queued]:
            del self.started[suite]


# Why a queued iteration waits, as a bounded set of names (the metrics' `reason` label):
# admission's own reasons here; waits.py adds "frozen", "pressure" and "no_room".
LIMIT, SUITE_CAP, TENANT_CAP = "limit", "suite_cap", "tenant_cap"


def blocked_by(c: Candidate, usage: Usage, policy: Policy) -> tuple[str, str] | None:
    """Why c may not start now: (LIMIT | SUITE_CAP | TENANT_CAP, "limit ci-db=8 reached"),
    or None."""
    for name in c.limits:
        cap = policy.limits.get(name)
        if cap is not None and usage.limits[name] >= cap:
            return LIMIT, f"limit {name}={cap} reached"
    suite_cap = policy.suite_caps.get(c.suite, policy.default_suite_cap)
    if suite_cap is not None and usage.suites[c.suite] >= suite_cap:
        return SUITE_CAP, f"suite {c.suite} at its cap of {suite_cap}"
    tenant_cap = policy.tenant_caps.get(c.tenant, policy.default_tenant_cap)
    if tenant_cap is not None and usage.tenants[c.tenant] >= tenant_cap:
        return TENANT_CAP, f"tenant {c.tenant} at its cap of {tenant_cap}"
    return None


def blocked(c: Candidate, usage: Usage, policy: Policy) -> str | None:
    """Why c may not start now ("limit ci-db=8 reached", ...), or None."""
    why = blocked_by(c, usage, policy)
    return None if why is None else why[1]


def admit(queue: Sequence[Candidate], usage: Usage, policy: Policy,
          try_place: Callable[[Candidate], bool]) -> list[Candidate]:
    """Admit what can start now. try_place reserves a host and says whether it found one;
    a suite whose next iteration is blocked or does not fit waits for the next pass."""
    heads: dict[str, deque[Candidate]] = defaultdict(deque)
    for c in sorted(queue, key=lambda c: (-c.priority, c.seq)):
        heads[c.suite].append(c)
    active = set(heads)
    admitted: list[Candidate] = []

    def rank(suite: str) -> tuple[int, float, float, int]:
        head = heads[suite][0]
        weight = policy.suite_weights.get(suite, 1.0)
        return (-head.priority, usage.suites[suite] / weight, usage.started[suite] / weight,
                head.seq)

    while active:
        suite = min(active, key=rank)
        c = heads[suite][0]
        if blocked(c, usage, policy) is not None or not try_place(c):
            active.discard(suite)
            continue
        heads[suite].popleft()
        usage.add(c)
        admitted.append(c)
        if not heads[suite]:
            active.discard(suite)
    return admitted


@dataclass(frozen=True, slots=True)
class PressureLimits:
    """Percent values; PSI `some avg10` for cpu, memory and io, and memory in use."""

    cpu_high: float = 90.0
    cpu_low: float = 60.0
    memory_high: float = 20.0
    memory_low: float = 5.0
    io_high: float = 60.0
    io_low: float = 30.0
    mem_used_high: float = 90.0
    mem_used_low: float = 80.0


def under_pressure(was: bool, readings: Mapping[str, float], limits: PressureLimits) -> bool:
    """Hysteresis: over any high mark -> pressured; pressured stays so until all are low."""
    pairs = (("cpu_some_avg10", limits.cpu_high, limits.cpu_low),
             ("memory_some_avg10", limits.memory_high, limits.memory_low),
             ("io_some_avg10", limits.io_high, limits.io_low),
             ("mem_used_pct", limits.mem_used_high, limits.mem_used_low))
    if was:
        return any(readings.get(key, 0.0) >= low for key, _, low in pairs)
    return any(readings.get(key, 0.0) >= high for key, high, _ in pairs)
