"""Placement: which host takes an iteration. Pure: no ray, libvirt or prometheus_client.

filters (does it fit, and if not, can it ever) -> scores (most-allocated bin-packing, image
locality, ready warm capacity) -> reserve, with an idempotent unreserve. Why a host was
rejected is a named reason; "cannot fit now" (wait) is kept apart from "can never fit" (fail).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace


class Reason(enum.StrEnum):
    CPU = "insufficient-cpu"
    MEMORY = "insufficient-memory"
    DISK = "insufficient-disk"
    IMAGE = "image-unavailable"
    UNHEALTHY = "host-unhealthy"
    DRAINING = "host-draining"
    PRESSURE = "host-under-pressure"


# Reasons that can pass with time on the same host; the others hold until the host changes.
TRANSIENT = frozenset({Reason.CPU, Reason.MEMORY, Reason.DISK, Reason.PRESSURE,
                       Reason.UNHEALTHY, Reason.DRAINING})


@dataclass(frozen=True, slots=True)
class Demand:
    cpus: int
    mem_mib: int
    disk_mib: int
    image: str


@dataclass(frozen=True, slots=True)
class HostView:
    name: str
    cpus: int
    mem_mib: int
    disk_mib: int
    used_cpus: int = 0
    used_mem_mib: int = 0
    used_disk_mib: int = 0
    images: frozenset[str] = frozenset()  # built on this host
    buildable: frozenset[str] = frozenset()  # recipes this host can build
    healthy: bool = True
    draining: bool = False
    pressured: bool = False
    warm: Mapping[str, int] = field(default_factory=dict)  # image -> ready pooled VMs


class Verdict(enum.StrEnum):
    PLACED = "placed"
    WAIT = "wait"  # does not fit now; will when capacity frees up
    NEVER = "never"  # no host could ever take it as things are


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    host: str | None = None
    score: float = 0.0
    rejected: Mapping[str, Reason] = field(default_factory=dict)

    def explain(self) -> str:
        if self.verdict is Verdict.PLACED:
            return f"placed on {self.host} (score {self.score:.3f})"
        if not self.rejected:
            return "no hosts in the fleet"
        why = ", ".join(f"{h}: {r.value}" for h, r in sorted(self.rejected.items()))
        return f"{'can never fit' if self.verdict is Verdict.NEVER else 'waiting'} ({why})"


def check(demand: Demand, host: HostView) -> Reason | None:
    """The first filter the host fails, or None when it can take the demand now."""
    if demand.cpus > host.cpus:
        return Reason.CPU
    if demand.mem_mib > host.mem_mib:
        return Reason.MEMORY
    if demand.disk_mib > host.disk_mib:
        return Reason.DISK
    if demand.image not in host.images and demand.image not in host.buildable:
        return Reason.IMAGE
    if not host.healthy:
        return Reason.UNHEALTHY
    if host.draining:
        return Reason.DRAINING
    if host.pressured:
        return Reason.PRESSURE
    if demand.cpus > host.cpus - host.used_cpus:
        return Reason.CPU
    if demand.mem_mib > host.mem_mib - host.used_mem_mib:
        return Reason.MEMORY
    if demand.disk_mib > host.disk_mib - host.used_disk_mib:
        return Reason.DISK
    return None


def _never(demand: Demand, host: HostView, reason: Reason) -> bool:
    """The host could not take the demand even empty and well: size or image."""
    if reason is Reason.IMAGE:
        return True
    if reason is Reason.CPU:
        return demand.cpus > host.cpus
    if reason is Reason.MEMORY:
        return demand.mem_mib > host.mem_mib
    if reason is Reason.DISK:
        return demand.disk_mib > host.disk_mib
    return False


LOCALITY_BONUS = 0.25
WARM_BONUS = 0.5


def score(demand: Demand, host: HostView) -> float:
    """Higher is better: fuller hosts first (bin-packing), then image locality, then warm VMs."""
    cpu = (host.used_cpus + demand.cpus) / host.cpus
    mem = (host.used_mem_mib + demand.mem_mib) / host.mem_mib
    packed = (cpu + mem) / 2
    local = LOCALITY_BONUS if demand.image in host.images else 0.0
    warm = WARM_BONUS if host.warm.get(demand.image, 0) > 0 else 0.0
    return packed + local + warm


def place(demand: Demand, hosts: Iterable[HostView]) -> Decision:
    rejected: dict[str, Reason] = {}
    best: HostView | None = None
    best_score = 0.0
    never = True
    for host in hosts:
        reason = check(demand, host)
        if reason is not None:
            rejected[host.name] = reason
            never = never and _never(demand, host, reason)
            continue
        never = False
        s = score(demand, host)
        if best is None or s > best_score or (s == best_score and
                                              _neg(host.name) > _neg(best.name)):
            best, best_score = host, s
    if best is not None:
        return Decision(Verdict.PLACED, best.name, best_score, rejected)
    return Decision(Verdict.NEVER if never else Verdict.WAIT, rejected=rejected)


@functools.lru_cache(maxsize=4096)
def _neg(name: str) -> tuple[int, ...]:
    """Ties go to the alphabetically first host, so placement is deterministic."""
    return tuple(-ord(c) for c in name)


class Reservations:
    """Capacity promised to placed-but-not-finished iterations, per host. Keyed, idempotent.
    Per-host totals are kept as reservations come and go, so apply() costs the same however
    many are held."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, Demand]] = {}
        self._used: dict[str, tuple[int, int, int]] = {}  # host -> (cpus, mem_mib, disk_mib)

    def reserve(self, key: str, host: str, demand: Demand) -> bool:
        """False (and nothing changes) when key already holds a reservation."""
        if key in self._held:
            return False
        self._held[key] = (host, demand)
        cpus, mem, disk = self._used.get(host, (0, 0, 0))
        self._used[host] = (cpus + demand.cpus, mem + demand.mem_mib, disk + demand.disk_mib)
        return True

    def unreserve(self, key: str) -> bool:
        """False when key held nothing: calling it twice is harmless."""
        held = self._held.pop(key, None)
        if held is None:
            return False
        host, d = held
        cpus, mem, disk = self._used[host]
        if cpus == d.cpus and mem == d.mem_mib and disk == d.disk_mib:
            del self._used[host]
        else:
            self._used[host] = (cpus - d.cpus, mem - d.mem_mib, disk - d.disk_mib)
        return True

    def host_of(self, key: str) -> str | None:
        held = self._held.get(key)
        return held[0] if held else None

    def keys_on(self, host: str) -> list[str]:
        return [k for k, (h, _) in self._held.items() if h == host]

    def apply(self, host: HostView) -> HostView:
        """The host as placement should see it: its usage plus what is reserved on it."""
        used = self._used.get(host.name)
        if used is None:
            return host
        return replace(host, used_cpus=host.used_cpus + used[0],
                       used_mem_mib=host.used_mem_mib + used[1],
                       used_disk_mib=host.used_disk_mib + used[2])

    def __len__(self) -> int:
        return len(self._held)
