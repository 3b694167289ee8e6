"""The hosts the scheduler knows: how to reach each, its capacity, pressure and health.

A real host runs its own node-agent actor (`tryfleet-node-<host>`). A simulated host is served
by a shared actor (`tryfleet-hosts-<group>`, see nodeagent/simhost.py) that takes the host's
name as the first argument of every call. An Endpoint hides the difference.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import ray

from tryfleet.nodeagent.actor import ACTOR_PREFIX, NAMESPACE, unpack
from tryfleet.nodeagent.simhost import SIM_PREFIX

from .admission import PressureLimits, under_pressure
from .placement import HostView

log = logging.getLogger("tryfleet.scheduler")
HOST_RESERVE_MIB = 1024  # memory left to the host itself
STATUS_TIMEOUT_S = 10.0
LOST_AFTER_FAILURES = 3


@dataclass(frozen=True, slots=True, eq=False)
class Endpoint:
    """How to call one host: its own actor (host None), or a shared actor and the host's name.
    Compared by identity: an agent found again gets a new Endpoint."""

    handle: Any
    host: str | None = None

    def call(self, method: str, *args: Any) -> Any:
        """Start the call; returns the ObjectRef (awaitable)."""
        fn = getattr(self.handle, method)
        return fn.remote(*args) if self.host is None else fn.remote(self.host, *args)


@dataclass
class Host:
    name: str
    endpoint: Endpoint
    view: HostView | None = None
    pressured: bool = False
    failures: int = 0
    lost: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    group: str | None = None  # the shared actor's name, for a simulated host


class Hosts:
    def __init__(self, limits: PressureLimits, cpu_overcommit: float = 1.0) -> None:
        self.limits = limits
        self.cpu_overcommit = cpu_overcommit
        self.by_name: dict[str, Host] = {}
        self.groups: dict[str, Any] = {}  # shared actor name -> handle
        self._views: list[HostView] | None = None

    def discover(self) -> list[str]:
        """Find node-agent actors (and shared simulated-host actors) that appeared since the
        last look; a shared actor's hosts are learnt from its status_all on refresh."""
        found = []
        for name in ray.util.list_named_actors(all_namespaces=False):
            if name.startswith(SIM_PREFIX):
                if name not in self.groups:
                    try:
                        self.groups[name] = ray.get_actor(name, namespace=NAMESPACE)
                    except ValueError:
                        continue
                continue
            if not name.startswith(ACTOR_PREFIX):
                continue
            host = name[len(ACTOR_PREFIX):]
            known = self.by_name.get(host)
            if known is not None and not known.lost:
                continue
            try:
                handle = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                continue
            self._add(Host(host, Endpoint(handle)))
            found.append(host)
        return found

    def _add(self, host: Host) -> None:
        self.by_name[host.name] = host
        self._views = None

    async def refresh(self) -> list[str]:
        """Ask every host for its status; returns the hosts newly considered lost."""
        alive = [h for h in self.by_name.values() if not h.lost and h.group is None]
        groups = list(self.groups.items())
        results = await asyncio.gather(
            *(self._refresh_one(h) for h in alive),
            *(asyncio.wait_for(handle.status_all.remote(), STATUS_TIMEOUT_S)
              for _, handle in groups),
            return_exceptions=True)
        newly_lost = []
        for host, res in zip(alive, results):
            if isinstance(res, BaseException) and self._failed(host, res):
                newly_lost.append(host.name)
        for (group, handle), res in zip(groups, results[len(alive):]):
            members = [h for h in self.by_name.values() if h.group == group and not h.lost]
            if isinstance(res, BaseException):
                if isinstance(res, ray.exceptions.RayActorError):
                    del self.groups[group]  # found again by discover if it comes back
                newly_lost += [h.name for h in members if self._failed(h, res)]
                continue
            statuses = unpack(res)
            for h in members:
                if h.name not in statuses:
                    self.mark_lost(h.name)
                    newly_lost.append(h.name)
            for name, status in statuses.items():
                host = self.by_name.get(name)
                if host is None or host.lost:
                    host = Host(name, Endpoint(handle, name), group=group)
                    self._add(host)
                self._apply(host, status)
        self._views = None
        return newly_lost

    def _failed(self, host: Host, err: BaseException) -> bool:
        """Count a failed status call; True when the host is now considered lost."""
        host.failures += 1
        log.warning("host %s did not answer (%s)", host.name, err)
        if host.failures >= LOST_AFTER_FAILURES or isinstance(err, ray.exceptions.RayActorError):
            self.mark_lost(host.name)
            return True
        return False

    async def _refresh_one(self, host: Host) -> None:
        status = unpack(await asyncio.wait_for(host.endpoint.call("status"), STATUS_TIMEOUT_S))
        self._apply(host, status)

    def _apply(self, host: Host, status: dict[str, Any]) -> None:
        host.failures = 0
        host.status = status
        readings = status["pressure"]
        host.pressured = under_pressure(host.pressured, readings, self.limits)
        cap = status["capacity"]
        host.view = HostView(
            name=host.name, cpus=int(cap["cpus"] * self.cpu_overcommit),
            # Idle pooled VMs hold memory: counted as used until an iteration takes one.
            mem_mib=max(0, cap["mem_mib"] - HOST_RESERVE_MIB - status.get("pool_mem_mib", 0)),
            disk_mib=cap["disk_free_mib"],
            images=frozenset(status["images"]), buildable=frozenset(status["buildable"]),
            healthy=True, pressured=host.pressured, warm=dict(status.get("warm") or {}),
        )

    def mark_lost(self, name: str) -> None:
        host = self.by_name.get(name)
        if host is not None and not host.lost:
            host.lost = True
            self._views = None
            log.warning("host %s lost; its iterations go elsewhere", name)

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

    def describe(self) -> list[dict[str, Any]]:
        return [{"host": h.name, "lost": h.lost, "pressured": h.pressured,
                 "cpus": h.view.cpus if h.view else None,
                 "mem_mib": h.view.mem_mib if h.view else None,
                 "accel": h.status.get("accel"), "running": h.status.get("running"),
                 "images": h.status.get("images"), "pressure": h.status.get("pressure")}
                for h in self.by_name.values()]
