"""The hosts the scheduler knows: how to reach each, its capacity, pressure and health.

Every node-agent actor (named under wire.NODE_ACTOR_PREFIX) implements wire.NodeProtocol: a
real host's agent serves that one host, a group of simulated hosts serves several. The
scheduler treats them alike: it asks each actor for `status_all`, and reaches each host it
learns of as (that actor, the host's name), the name going first in every call.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from typing import Any

import ray

from tryfleet.wire import NAMESPACE, NODE_ACTOR_PREFIX, HostStatus, Pressure, unpack_map

from .admission import PressureLimits, under_pressure
from .placement import HostView

log = logging.getLogger("tryfleet.scheduler")
HOST_RESERVE_MIB = 1024  # memory left to the host itself
STATUS_TIMEOUT_S = 10.0
LOST_AFTER_FAILURES = 3


@dataclass(frozen=True, slots=True, eq=False)
class Endpoint:
    """How to call one host: the node-agent actor that serves it, and its name. Compared by
    identity: a host found again gets a new Endpoint."""

    handle: Any
    host: str

    def call(self, method: str, *args: Any) -> Any:
        """Start the call; returns the ObjectRef (awaitable)."""
        return getattr(self.handle, method).remote(self.host, *args)


@dataclass
class Host:
    name: str
    endpoint: Endpoint
    agent: str  # the name of the node-agent actor that serves it
    view: HostView | None = None
    pressured: bool = False
    failures: int = 0
    lost: bool = False
    status: HostStatus | None = None


@dataclass(frozen=True, slots=True)
class HostSummary:
    """One host as `status` shows it: what its node agent last reported and what the scheduler
    makes of it."""

    host: str
    lost: bool
    pressured: bool
    cpus: int | None  # as placement counts them (with overcommit)
    mem_mib: int | None  # as placement counts it (less the host's reserve and pooled VMs)
    accel: str | None
    running: int | None
    images: tuple[str, ...] | None
    pressure: Pressure | None
    vms: int | None = None  # VMs running there, pooled ones too

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "images": None if self.images is None else list(self.images)}


class Hosts:
    def __init__(self, limits: PressureLimits, cpu_overcommit: float = 1.0) -> None:
        self.limits = limits
        self.cpu_overcommit = cpu_overcommit
        self.by_name: dict[str, Host] = {}
        self.agents: dict[str, Any] = {}  # node-agent actor name -> handle
        self._views: list[HostView] | None = None

    def discover(self) -> list[str]:
        """Find node-agent actors that appeared since the last look (their hosts are learnt
        from status_all on refresh); the names of the new ones."""
        found = []
        for name in ray.util.list_named_actors(all_namespaces=False):
            if not name.startswith(NODE_ACTOR_PREFIX) or name in self.agents:
                continue
            try:
                self.agents[name] = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                continue
            found.append(name)
        return found

    async def refresh(self) -> list[str]:
        """Ask every node-agent actor for the status of its hosts; returns the hosts newly
        considered lost."""
        agents = list(self.agents.items())
        results = await asyncio.gather(
            *(asyncio.wait_for(handle.status_all.remote(), STATUS_TIMEOUT_S)
              for _, handle in agents),
            return_exceptions=True)
        newly_lost = []
        for (agent, handle), res in zip(agents, results, strict=True):
            served = [h for h in self.by_name.values() if h.agent == agent and not h.lost]
            if isinstance(res, BaseException):
                if isinstance(res, ray.exceptions.RayActorError):
                    del self.agents[agent]  # found again by discover if it comes back
                newly_lost += [h.name for h in served if self._failed(h, res)]
                continue
            statuses = unpack_map(HostStatus, res)
            for h in served:
                if h.name not in statuses:
                    self.mark_lost(h.name)
                    newly_lost.append(h.name)
            for name, status in statuses.items():
                host = self.by_name.get(name)
                if host is None or host.lost or host.agent != agent:
                    host = self.by_name[name] = Host(name, Endpoint(handle, name), agent)
                self._apply(host, status)
        self._views = None
        return newly_lost

    def _failed(self, host: Host, err: BaseException) -> bool:
        """Count a failed status call; True when the host is now considered lost."""
        host.failures += 1
        log.warning("host %s did not answer (%s)", host.name, err, extra={"host": host.name})
        if host.failures >= LOST_AFTER_FAILURES or isinstance(err, ray.exceptions.RayActorError):
            self.mark_lost(host.name)
            return True
        return False

    def _apply(self, host: Host, status: HostStatus) -> None:
        host.failures = 0
        host.status = status
        host.pressured = under_pressure(host.pressured, asdict(status.pressure), self.limits)
        cap = status.capacity
        host.view = HostView(
            name=host.name, cpus=int(cap.cpus * self.cpu_overcommit),
            # Idle pooled VMs hold memory: counted as used until an iteration takes one.
            mem_mib=max(0, cap.mem_mib - HOST_RESERVE_MIB - status.pool_mem_mib),
            disk_mib=cap.disk_free_mib,
            images=frozenset(status.images), buildable=frozenset(status.buildable),
            healthy=True, pressured=host.pressured, warm=status.warm,
        )

    def mark_lost(self, name: str) -> None:
        host = self.by_name.get(name)
        if host is not None and not host.lost:
            host.lost = True
            self._views = None
            log.warning("host %s lost; its iterations go elsewhere", name, extra={"host": name})

    def views(self) -> list[HostView]:
        """The usable hosts as placement sees them (without reservations); cached until the
        next refresh or loss."""
        if self._views is None:
            self._views = [h.view for h in self.by_name.values()
                           if not h.lost and h.view is not None]
        return self._views

    def endpoint(self, name: str) -> Endpoint | None:
        host = self.by_name.get(name)
        return None if host is None or host.lost else host.endpoint

    def alive(self) -> list[Host]:
        return [h for h in self.by_name.values() if not h.lost]

    def describe(self) -> list[HostSummary]:
        return [HostSummary(
            host=h.name, lost=h.lost, pressured=h.pressured,
            cpus=h.view.cpus if h.view else None, mem_mib=h.view.mem_mib if h.view else None,
            accel=h.status.accel if h.status else None,
            running=h.status.running if h.status else None,
            images=h.status.images if h.status else None,
            pressure=h.status.pressure if h.status else None,
            vms=len(h.status.vms) if h.status else None)
            for h in self.by_name.values()]
