"""Simulated hosts: one async Ray actor serves many hosts that run no VMs, for benchmarks and
tests.

The actor implements wire.NodeProtocol, the very protocol of a real node agent, with the same
wire records, and is named under the same prefix (`tryfleet-node-sim-<group>`): the scheduler
finds it as it finds a real node agent, learns its hosts from status_all, and reaches each one
as (this actor, host name), so it has no code path of its own for simulated hosts. An attempt
is a timer: a boot delay then an exec delay, both drawn from a seeded distribution keyed by the
iteration id, so a baseline can draw the very same delays.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tryfleet.wire import (
    NAMESPACE,
    NODE_ACTOR_PREFIX,
    AttemptInfo,
    AttemptKey,
    Capacity,
    HostStatus,
    Outcome,
    Output,
    Pressure,
    StartRequest,
    State,
    WrongHost,
    pack,
    unpack,
    unpack_list,
)

from . import exporter

SIM_GROUP_PREFIX = NODE_ACTOR_PREFIX + "sim-"  # a node-agent actor serving a group of hosts


@dataclass(frozen=True, slots=True)
class Delays:
    """Lognormal boot and exec delays: a median in ms and the sigma of the log."""

    seed: int = 0
    boot_median_ms: float = 5.0
    boot_sigma: float = 0.5
    exec_median_ms: float = 5.0
    exec_sigma: float = 0.5

    def draw(self, iid: str) -> tuple[float, float]:
        """(boot_s, exec_s) of the iteration `iid`: the same for the same seed and id."""
        rng = random.Random(f"{self.seed}:{iid}")
        boot = rng.lognormvariate(math.log(self.boot_median_ms / 1000), self.boot_sigma)
        run = rng.lognormvariate(math.log(self.exec_median_ms / 1000), self.exec_sigma)
        return boot, run

    def describe(self) -> str:
        return (f"boot lognormal(median {self.boot_median_ms:g} ms, sigma {self.boot_sigma:g}), "
                f"exec lognormal(median {self.exec_median_ms:g} ms, sigma {self.exec_sigma:g}), "
                f"seed {self.seed}, drawn per iteration id")


@dataclass(frozen=True, slots=True)
class SimHostSpec:
    name: str
    cpus: int = 16
    mem_mib: int = 32768
    disk_mib: int = 1_000_000
    images: tuple[str, ...] = ("base",)
    pressure: tuple[tuple[str, float], ...] = ()  # readings other than 0.0


@dataclass
class _Attempt:
    key: AttemptKey
    timer: asyncio.TimerHandle | None = None
    outcome: Outcome | None = None


@dataclass
class _Host:
    spec: SimHostSpec
    attempts: dict[AttemptKey, _Attempt] = field(default_factory=dict)
    finished: dict[AttemptKey, Outcome] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0


class SimHosts:
    """Many simulated hosts in one process (an async Ray actor, or a plain object in tests)."""

    def __init__(self, hosts: Sequence[SimHostSpec | dict[str, Any]],
                 delays: Delays | dict[str, Any] | None = None,
                 removed_file: str | None = None) -> None:
        specs = [h if isinstance(h, SimHostSpec) else SimHostSpec(**h) for h in hosts]
        self.delays = delays if isinstance(delays, Delays) else Delays(**(delays or {}))
        # Hosts removed for good stay removed when Ray restarts this actor: they are written
        # to removed_file, which a restart (same arguments) reads back.
        self.removed_file = Path(removed_file) if removed_file else None
        gone = set(_read_lines(self.removed_file))
        self._hosts = {s.name: _Host(s) for s in specs if s.name not in gone}
        self.started = 0

    def _host(self, host: str) -> _Host:
        try:
            return self._hosts[host]
        except KeyError:
            raise WrongHost(f"no simulated host {host!r} in this group") from None

    # ---- chaos: what a soak kills and removes ------------------------------------------------
    async def pid(self) -> int:
        """This actor's process id (what a chaos test kills)."""
        return os.getpid()

    async def remove(self, host: str) -> int:
        """Take host away for good, as if its machine were gone: its attempts vanish without
        an outcome, status_all stops listing it and every call naming it fails. Returns how
        many unfinished attempts it took along."""
        h = self._host(host)
        del self._hosts[host]
        if self.removed_file is not None:
            with self.removed_file.open("a") as f:
                f.write(host + "\n")
        lost = [a for a in h.attempts.values() if a.outcome is None]
        for att in lost:
            if att.timer is not None:
                att.timer.cancel()
        h.finished.clear()  # outcomes not yet collected are gone with the machine
        h.ready.set()  # a collect waiting on it returns (empty) now
        return len(lost)

    # ---- wire.NodeProtocol: hosts ----------------------------------------------------------
    def _status(self, h: _Host) -> HostStatus:
        s = h.spec
        return HostStatus(host=s.name, pid=os.getpid(), accel="sim",
                          capacity=Capacity(s.name, s.cpus, s.mem_mib, s.disk_mib),
                          pressure=Pressure(**dict(s.pressure)), images=tuple(s.images),
                          running=h.running)

    async def status_all(self) -> bytes:
        return pack({name: self._status(h) for name, h in self._hosts.items()})

    async def shutdown(self) -> None:
        for h in self._hosts.values():
            for att in list(h.attempts.values()):
                if att.timer is not None:
                    att.timer.cancel()

    async def metrics(self) -> bytes:
        """This process's Prometheus metrics (simulated hosts measure nothing of their own)."""
        return exporter.exposition()

    # ---- wire.NodeProtocol: attempts -------------------------------------------------------
    async def start_many(self, host: str, requests: bytes) -> bytes:
        h = self._host(host)
        return pack([self._start(h, r) for r in unpack_list(StartRequest, requests)])

    def _start(self, h: _Host, req: StartRequest) -> bool:
        key = AttemptKey(req.id, req.attempt)
        if key in h.attempts:
            return False
        att = h.attempts[key] = _Attempt(key)
        boot_s, exec_s = self.delays.draw(req.id)
        timeout_s = req.spec.timeout_s
        timed_out = exec_s > timeout_s
        total = boot_s + min(exec_s, timeout_s)
        att.timer = asyncio.get_running_loop().call_later(
            total, self._finish, h, att, State.TIMED_OUT if timed_out else State.SUCCEEDED,
            time.time(), total)
        h.running += 1
        self.started += 1
        return True

    def _finish(self, h: _Host, att: _Attempt, state: State, started_at: float,
                duration_s: float) -> None:
        if att.outcome is not None:
            return
        h.running -= 1
        att.timer = None
        att.outcome = Outcome(
            att.key.id, att.key.attempt, state, h.spec.name,
            exit_code=0 if state is State.SUCCEEDED else None, started_at=started_at,
            ended_at=time.time(), duration_s=duration_s,
            error=None if state is State.SUCCEEDED else state.value)
        h.finished[att.key] = att.outcome
        h.ready.set()

    async def collect(self, host: str, acks: bytes, timeout_s: float,
                      linger_s: float = 0.0) -> bytes:
        """Forget the acknowledged attempts, then every finished outcome not yet acknowledged,
        once there is one (after linger_s more to gather others) or timeout_s passed."""
        h = self._host(host)
        for key in unpack_list(AttemptKey, acks):
            h.finished.pop(key, None)
            h.attempts.pop(key, None)
        if not h.finished:
            h.ready.clear()
            try:
                await asyncio.wait_for(h.ready.wait(), timeout_s)
            except TimeoutError:
                return pack([])
            if linger_s > 0:
                await asyncio.sleep(linger_s)
        return pack(list(h.finished.values()))

    async def attempts(self, host: str) -> bytes:
        return pack([AttemptInfo(k.id, k.attempt, a.outcome is not None)
                     for k, a in self._host(host).attempts.items()])

    async def output(self, host: str, key: bytes, out_offset: int,
                     err_offset: int) -> bytes | None:
        """A simulated command prints nothing: empty output, and whether it has ended."""
        att = self._host(host).attempts.get(unpack(AttemptKey, key))
        return None if att is None else pack(Output(b"", b"", att.outcome is not None))

    async def cancel(self, host: str, iid: str, attempt: int | None = None) -> int:
        h = self._host(host)
        hits = [a for k, a in h.attempts.items()
                if k.id == iid and attempt in (None, k.attempt) and a.outcome is None]
        for att in hits:
            self._stop(h, att)
        return len(hits)

    async def cancel_all(self, host: str) -> int:
        h = self._host(host)
        hits = [a for a in h.attempts.values() if a.outcome is None]
        for att in hits:
            self._stop(h, att)
        return len(hits)

    def _stop(self, h: _Host, att: _Attempt) -> None:
        if att.timer is not None:
            att.timer.cancel()
        self._finish(h, att, State.CANCELLED, time.time(), 0.0)

    # ---- for benchmarks --------------------------------------------------------------------
    async def ping(self) -> str:
        return "ok"

    async def stats(self) -> dict[str, Any]:
        return {"hosts": len(self._hosts), "started": self.started,
                "running": sum(h.running for h in self._hosts.values()),
                "unacknowledged": sum(len(h.finished) for h in self._hosts.values()),
                "delays": asdict(self.delays)}


def _read_lines(path: Path | None) -> list[str]:
    try:
        return path.read_text().split() if path is not None else []
    except FileNotFoundError:
        return []


def start_sim_hosts(group: str, hosts: Sequence[SimHostSpec], delays: Delays,
                    detached: bool = False) -> Any:
    """Create the actor serving `hosts`, named SIM_GROUP_PREFIX + group: the scheduler finds it
    as it finds any node agent."""
    import ray

    options: dict[str, Any] = {"name": SIM_GROUP_PREFIX + group, "namespace": NAMESPACE,
                               "num_cpus": 0, "max_concurrency": 10_000, "get_if_exists": True}
    if detached:
        options["lifetime"] = "detached"
    actor: Any = ray.remote(SimHosts).options(**options).remote(
        [asdict(h) for h in hosts], asdict(delays))
    ray.get(actor.ping.remote())
    return actor


__all__ = ["SIM_GROUP_PREFIX", "Delays", "SimHostSpec", "SimHosts", "start_sim_hosts"]
