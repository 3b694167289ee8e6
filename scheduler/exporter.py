"""The scheduler's Prometheus metrics, and what it hands the gateway's /metrics.

Counters of what happened (iterations ended by state, attempts started, retries) live in this
process's default registry; what the fleet looks like now (queue, admission waits, hosts,
pools, suites, switches) is read from the engine at scrape time by `FleetCollector`, so
nothing is kept twice. `gather` asks every node agent for its own registry (start-time and
exec histograms, egress) at the same time, each within a deadline: a host whose agent does
not answer is `tryfleet_host_up{host} 0`, and the scrape goes on without it.

Labels are bounded: no ids. Suites are named by users, so `tryfleet_suite_iterations` covers
only the suites with queued or running iterations (at most MAX_LIVE_SUITES, newest first)
and the RECENT_SUITES most recent others; `tryfleet_ledger_iterations` counts every one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tryfleet.wire import Exposition, HostStatus, unpack

from .events import Abandon, Finish, Requeue
from .records import TERMINAL, Phase
from .switches import Level, Strength
from .waits import waiting

if TYPE_CHECKING:
    from .engine import Engine

# no `_created` series beside every counter and histogram
disable_created_metrics()  # type: ignore[no-untyped-call]
log = logging.getLogger("tryfleet.scheduler")
MAX_LIVE_SUITES = 50
RECENT_SUITES = 10
NODE_TIMEOUT_S = 2.0

@dataclass(frozen=True, slots=True)
class Counters:
    ended: Counter
    started: Counter
    retries: Counter


@functools.cache
def counters() -> Counters:
    """The scheduler's counters, registered in this process's default registry by its first
    Engine: not on import, so that a process that imports this module without scheduling (the
    gateway's) serves no zeros of them, which Prometheus would take for counter resets."""
    made = Counters(
        Counter("tryfleet_iterations", "Iterations that reached a terminal state, by that "
                "state (counted by the scheduler since it started)", ["state"]),
        Counter("tryfleet_attempts_started",
                "Attempts of iterations placed on a host and started"),
        Counter("tryfleet_iteration_retries",
                "Attempts that ended and whose iteration was queued for another attempt"))
    for state in TERMINAL:
        made.ended.labels(state)
    return made


def started(n: int) -> None:
    counters().started.inc(n)


def counted(writes: Sequence[object]) -> None:
    """The ledger writes of a scheduling pass, committed: iterations ended, retries."""
    c = counters()
    for a in writes:
        if isinstance(a, Finish):
            c.ended.labels(a.state.value).inc()
        elif isinstance(a, Abandon):
            c.ended.labels(Phase.INFRA_ERROR.value).inc()
        elif isinstance(a, Requeue):
            c.retries.inc()


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class FleetCollector(Collector):
    """The fleet as the engine sees it at scrape time. `answered`: the node-agent actors
    whose metrics came back in this scrape (None: not asked; every live host counts as up)."""

    def __init__(self, engine: Engine, answered: set[str] | None = None) -> None:
        self.engine, self.answered = engine, answered

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        state = e.core.state
        by_reason = waiting(state)  # every queued iteration, under one reason each
        yield GaugeMetricFamily("tryfleet_queued_iterations",
                                "Iterations waiting in the queue", value=sum(by_reason.values()))
        yield GaugeMetricFamily("tryfleet_running_iterations",
                                "Iterations placed on a host and not yet ended",
                                value=e.in_flight)
        waits = _gauge("tryfleet_admission_waiting_iterations",
                       "Queued iterations by why they wait: frozen, limit, suite_cap, "
                       "tenant_cap, pressure, no_room", ("reason",))
        for reason, n in by_reason.items():
            waits.add_metric([reason], n)
        yield waits
        yield GaugeMetricFamily("tryfleet_sandboxes_open",
                                "Interactive sandboxes holding capacity", value=len(state.leases))
        yield from self._limits()
        yield self._switches()
        yield from self._iterations()
        yield from self._hosts()
        if e.audit is not None:
            appends = CounterMetricFamily("tryfleet_audit_appends",
                                          "Records appended to the audit trail, by writer",
                                          labels=["writer"])
            appends.add_metric(["scheduler"], e.audit.appended)
            yield appends

    def _limits(self) -> Iterator[Metric]:
        sizes = self.engine.policy.limits
        used = self.engine.core.state.usage.limits
        size = _gauge("tryfleet_limit_size", "Size of each fleet-wide shared-resource limit",
                      ("limit",))
        held = _gauge("tryfleet_limit_in_use",
                      "Running iterations holding each shared-resource limit", ("limit",))
        for name in sorted(sizes):
            size.add_metric([name], sizes[name])
            held.add_metric([name], used.get(name, 0))
        yield size
        yield held

    def _switches(self) -> Metric:
        on = _gauge("tryfleet_switches_on", "Kill switches in force, by level and strength",
                    ("level", "strength"))
        counts = {(lv, st): 0 for lv in Level for st in Strength}
        for sw in self.engine.core.state.switches:
            counts[(sw.level, sw.strength)] += 1
        for (lv, st), n in counts.items():
            on.add_metric([lv.value, st.value], n)
        return on

    def _iterations(self) -> Iterator[Metric]:
        ledger = self.engine.ledger
        total = _gauge("tryfleet_ledger_iterations",
                       "Iterations in the ledger, by state (every tenant and suite)",
                       ("state",))
        counts = ledger.counts()
        for phase in Phase:
            total.add_metric([phase.value], counts.get(phase.value, 0))
        yield total
        suites = _gauge("tryfleet_suite_iterations",
                        f"Iterations by tenant, suite and state, for the suites with queued "
                        f"or running work (at most {MAX_LIVE_SUITES}) and the "
                        f"{RECENT_SUITES} most recent others", ("tenant", "suite", "state"))
        for tenant, suite in self._suites():
            got = ledger.counts(suite, tenant)
            for phase in Phase:
                suites.add_metric([tenant, suite, phase.value], got.get(phase.value, 0))
        yield suites

    def _suites(self) -> list[tuple[str, str]]:
        """The suites tryfleet_suite_iterations names: bounded, see the module's docstring."""
        live = {(w.row.tenant, w.row.suite) for w in self.engine.core.state.work.values()}
        recent = self.engine.ledger.recent_suites(MAX_LIVE_SUITES + RECENT_SUITES)
        chosen = [s for s in recent if s in live]
        chosen += sorted(live - set(chosen))  # live suites older than the recent ones
        chosen = chosen[:MAX_LIVE_SUITES]
        return chosen + [s for s in recent if s not in live][:RECENT_SUITES]

    def _hosts(self) -> Iterator[Metric]:
        g = {name: _gauge(name, doc, labels) for name, doc, labels in _HOST_GAUGES}
        for h in self.engine.hosts.by_name.values():
            up = not h.lost and (self.answered is None or h.agent in self.answered)
            g["tryfleet_host_up"].add_metric([h.name], 1 if up else 0)
            if h.lost or h.status is None:
                continue
            _host_samples(g, h.name, h.status, h.pressured)
        yield from g.values()


_HOST_GAUGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("tryfleet_host_up", "1 when the host's node agent answered this scrape and the scheduler "
     "has not lost it, else 0", ("host",)),
    ("tryfleet_host_info", "Always 1: the host's accelerator (kvm, tcg, sim)", ("host", "accel")),
    ("tryfleet_host_pressured", "1 while admission holds new work back from the host for "
     "pressure", ("host",)),
    ("tryfleet_host_cpus", "vCPUs of the host", ("host",)),
    ("tryfleet_host_memory_bytes", "Memory of the host", ("host",)),
    ("tryfleet_host_disk_free_bytes", "Free disk of the host's data directory", ("host",)),
    ("tryfleet_host_memory_used_ratio", "Share of the host's memory in use", ("host",)),
    ("tryfleet_host_pressure_ratio", "Pressure stall information, 10 s average: the share of "
     "time some (or all) tasks stalled on the resource", ("host", "resource", "kind")),
    ("tryfleet_host_vms", "VMs running on the host (pooled ones included)", ("host",)),
    ("tryfleet_host_running_attempts", "Attempts running on the host", ("host",)),
    ("tryfleet_pool_ready_vms", "Warm VMs ready to hand out, by image", ("host", "image")),
    ("tryfleet_pool_wanted_vms", "Warm VMs the pool aims to keep ready, by image",
     ("host", "image")),
)
_MIB = 1024 * 1024


def _host_samples(g: dict[str, GaugeMetricFamily], host: str, s: HostStatus,
                  pressured: bool) -> None:
    g["tryfleet_host_info"].add_metric([host, s.accel], 1)
    g["tryfleet_host_pressured"].add_metric([host], 1 if pressured else 0)
    g["tryfleet_host_cpus"].add_metric([host], s.capacity.cpus)
    g["tryfleet_host_memory_bytes"].add_metric([host], s.capacity.mem_mib * _MIB)
    g["tryfleet_host_disk_free_bytes"].add_metric([host], s.capacity.disk_free_mib * _MIB)
    p = s.pressure
    g["tryfleet_host_memory_used_ratio"].add_metric([host], p.mem_used_pct / 100)
    for resource, kind, pct in (("cpu", "some", p.cpu_some_avg10),
                                ("memory", "some", p.memory_some_avg10),
                                ("memory", "full", p.memory_full_avg10),
                                ("io", "some", p.io_some_avg10),
                                ("io", "full", p.io_full_avg10)):
        g["tryfleet_host_pressure_ratio"].add_metric([host, resource, kind], pct / 100)
    g["tryfleet_host_vms"].add_metric([host], len(s.vms))
    g["tryfleet_host_running_attempts"].add_metric([host], s.running)
    ready = dict.fromkeys(s.images, 0)  # 0 for an image without a pool: a series all along
    wanted = dict.fromkeys(s.images, 0)
    for row in s.pool:
        ready[row.image] = ready.get(row.image, 0) + row.ready
        wanted[row.image] = wanted.get(row.image, 0) + row.wanted
    for image in sorted(ready):
        g["tryfleet_pool_ready_vms"].add_metric([host, image], ready[image])
        g["tryfleet_pool_wanted_vms"].add_metric([host, image], wanted[image])


async def gather(engine: Engine, timeout_s: float = NODE_TIMEOUT_S) -> dict[str, Any]:
    """What the gateway's /metrics needs of the scheduler's side, asked of every node agent
    at once: {"pid": this process, "shared": this process's default registry, "fleet":
    FleetCollector's samples, "nodes": [packed wire.Exposition of each agent that answered
    within timeout_s]} (Prometheus text format, bytes)."""
    agents = list(engine.hosts.agents.items())

    async def ask(handle: Any) -> bytes:
        return bytes(await asyncio.wait_for(handle.metrics.remote(), timeout_s))

    got = await asyncio.gather(*(ask(h) for _, h in agents), return_exceptions=True)
    answered, nodes = set(), []
    for (name, _), res in zip(agents, got, strict=True):
        if isinstance(res, BaseException):
            log.warning("node agent %s gave no metrics: %s", name, res or type(res).__name__)
            continue
        try:
            unpack(Exposition, res)
        except Exception as err:  # a node agent that answers nonsense is left out
            log.warning("node agent %s gave unreadable metrics: %s", name, err)
            continue
        answered.add(name)
        nodes.append(res)
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetCollector(engine, answered))
    return {"pid": os.getpid(), "shared": generate_latest(REGISTRY),
            "fleet": generate_latest(fleet), "nodes": nodes}


__all__ = ["MAX_LIVE_SUITES", "NODE_TIMEOUT_S", "RECENT_SUITES", "Counters", "FleetCollector",
           "counted", "counters", "gather", "started"]
