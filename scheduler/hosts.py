"""The hosts the scheduler knows: their node-agent actors, capacity, pressure and health."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import ray

from nodeagent.actor import ACTOR_PREFIX, NAMESPACE, unpack

from .admission import PressureLimits, under_pressure
from .placement import HostView

log = logging.getLogger("tryfleet.scheduler")
HOST_RESERVE_MIB = 1024  # memory left to the host itself
STATUS_TIMEOUT_S = 10.0
LOST_AFTER_FAILURES = 3


@dataclass
class Host:
    name: str
    handle: Any
    view: HostView | None = None
    pressured: bool = False
    failures: int = 0
    lost: bool = False
    status: dict[str, Any] = field(default_factory=dict)


class Hosts:
    def __init__(self, limits: PressureLimits, cpu_overcommit: float = 1.0) -> None:
        self.limits = limits
        self.cpu_overcommit = cpu_overcommit
        self.by_name: dict[str, Host] = {}

    def discover(self) -> list[str]:
        """Find node-agent actors that appeared since the last look."""
        found = []
        for name in ray.util.list_named_actors(all_namespaces=False):
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
            self.by_name[host] = Host(host, handle)
            found.append(host)
        return found

    async def refresh(self) -> list[str]:
        """Ask every host for its status; returns the hosts newly considered lost."""
        alive = [h for h in self.by_name.values() if not h.lost]
        results = await asyncio.gather(*(self._refresh_one(h) for h in alive),
                                       return_exceptions=True)
        newly_lost = []
        for host, res in zip(alive, results):
            if isinstance(res, BaseException):
                host.failures += 1
                log.warning("host %s did not answer (%s)", host.name, res)
                if host.failures >= LOST_AFTER_FAILURES or isinstance(res, ray.exceptions.RayActorError):
                    self.mark_lost(host.name)
                    newly_lost.append(host.name)
        return newly_lost

    async def _refresh_one(self, host: Host) -> None:
        status = unpack(await asyncio.wait_for(host.handle.status.remote(), STATUS_TIMEOUT_S))
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
            log.warning("host %s lost; its iterations go elsewhere", name)

    def views(self) -> list[HostView]:
        return [h.view for h in self.by_name.values() if not h.lost and h.view is not None]

    def handle(self, name: str) -> Any | None:
        host = self.by_name.get(name)
        return None if host is None or host.lost else host.handle

    def describe(self) -> list[dict[str, Any]]:
        return [{"host": h.name, "lost": h.lost, "pressured": h.pressured,
                 "cpus": h.view.cpus if h.view else None,
                 "mem_mib": h.view.mem_mib if h.view else None,
                 "accel": h.status.get("accel"), "running": h.status.get("running"),
                 "images": h.status.get("images"), "pressure": h.status.get("pressure")}
                for h in self.by_name.values()]
