"""Simulated hosts: one async Ray actor serves many hosts that run no VMs, for benchmarks.

Each simulated host has a capacity, images and pressure readings, and answers the node agent's
calls (status, start_many, collect, cancel, ...) with its name as the first argument: the
scheduler reaches a simulated host as (this actor, host name) and a real host through its own
node-agent actor. An attempt is a timer: a boot delay then an exec delay, both drawn from a
seeded distribution keyed by the iteration id, so a baseline can draw the very same delays.
Payloads are msgpack bytes, as with the real node agent.
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

from .actor import NAMESPACE, pack, unpack
from .records import State

SIM_PREFIX = "tryfleet-hosts-"  # a named actor under this prefix serves many hosts


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
    key: tuple[str, int]
    timer: asyncio.TimerHandle | None = None
    outcome: dict[str, Any] | None = None


@dataclass
class _Host:
    spec: SimHostSpec
    attempts: dict[tuple[str, int], _Attempt] = field(default_factory=dict)
    finished: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
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
            raise KeyError(f"no simulated host {host!r} here") from None

    # ---- host ------------------------------------------------------------------------------
    async def ping(self) -> str:
        return "ok"

    async def hosts(self) -> list[str]:
        return list(self._hosts)

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

    def _status(self, h: _Host) -> dict[str, Any]:
        s = h.spec
        readings = {"cpu_some_avg10": 0.0, "memory_some_avg10": 0.0, "memory_full_avg10": 0.0,
                    "io_some_avg10": 0.0, "io_full_avg10": 0.0, "mem_used_pct": 0.0,
                    "load1": 0.0, **dict(s.pressure)}
        return {"host": s.name, "pid": os.getpid(), "accel": "sim",
                "capacity": {"hostname": s.name, "cpus": s.cpus, "mem_mib": s.mem_mib,
                             "disk_free_mib": s.disk_mib},
                "pressure": readings, "images": list(s.images), "buildable": [],
                "running": h.running, "vms": []}

    async def status(self, host: str) -> bytes:
        return pack(self._status(self._host(host)))

    async def status_all(self) -> bytes:
        """Every host's status in one answer: {host: status}."""
        return pack({name: self._status(h) for name, h in self._hosts.items()})

    # ---- attempts --------------------------------------------------------------------------
    def _start(self, h: _Host, p: dict[str, Any]) -> bool:
        key = (p["id"], p["attempt"])
        if key in h.attempts:
            return False
        att = h.attempts[key] = _Attempt(key)
        boot_s, exec_s = self.delays.draw(p["id"])
        timeout_s = float(p["iteration"].get("timeout_s") or 600.0)
        started_at = time.time()
        timed_out = exec_s > timeout_s
        total = boot_s + min(exec_s, timeout_s)
        att.timer = asyncio.get_running_loop().call_later(
            total, self._finish, h, att, State.TIMED_OUT if timed_out else State.SUCCEEDED,
            started_at, total)
        h.running += 1
        self.started += 1
        return True

    def _finish(self, h: _Host, att: _Attempt, state: State, started_at: float,
                duration_s: float) -> None:
        if att.outcome is not None:
            return
        h.running -= 1
        att.timer = None
        att.outcome = {
            "id": att.key[0], "attempt": att.key[1], "state": state.value,
            "exit_code": 0 if state is State.SUCCEEDED else None, "signal": None,
            "stdout": b"", "stderr": b"", "stdout_truncated": False, "stderr_truncated": False,
            "started_at": started_at, "ended_at": time.time(), "duration_s": duration_s,
            "host": h.spec.name, "error": None if state is State.SUCCEEDED else state.value,
        }
        h.finished[att.key] = att.outcome
        h.ready.set()

    async def start(self, host: str, payload: bytes) -> bool:
        return self._start(self._host(host), unpack(payload))

    async def start_many(self, host: str, payload: bytes) -> bytes:
        h = self._host(host)
        return pack([self._start(h, p) for p in unpack(payload)])

    async def collect(self, host: str, acks: bytes, timeout_s: float,
                      linger_s: float = 0.0) -> bytes:
        """Forget the acknowledged attempts, then every finished outcome not yet acknowledged,
        once there is one (after linger_s more to gather others) or timeout_s passed."""
        h = self._host(host)
        for iid, attempt in unpack(acks):
            h.finished.pop((iid, attempt), None)
            h.attempts.pop((iid, attempt), None)
        if not h.finished:
            h.ready.clear()
            try:
                await asyncio.wait_for(h.ready.wait(), timeout_s)
            except TimeoutError:
                return pack([])
            if linger_s > 0:
                await asyncio.sleep(linger_s)
        return pack(list(h.finished.values()))

    async def wait(self, host: str, iid: str, attempt: int, timeout_s: float) -> bytes | None:
        h = self._host(host)
        att = h.attempts.get((iid, attempt))
        if att is None:
            return pack({"state": State.INFRA_ERROR.value, "lost": True, "host": host,
                         "error": f"attempt {attempt} of {iid} is unknown on {host}"})
        deadline = time.monotonic() + timeout_s
        while att.outcome is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            h.ready.clear()
            try:
                await asyncio.wait_for(h.ready.wait(), left)
            except TimeoutError:
                return None
        return pack(att.outcome)

    async def ack(self, host: str, iid: str, attempt: int) -> None:
        h = self._host(host)
        h.finished.pop((iid, attempt), None)
        h.attempts.pop((iid, attempt), None)

    async def attempts(self, host: str) -> bytes:
        return pack([{"id": k[0], "attempt": k[1], "done": a.outcome is not None}
                     for k, a in self._host(host).attempts.items()])

    async def cancel(self, host: str, iid: str, attempt: int | None = None) -> int:
        h = self._host(host)
        hits = [a for k, a in h.attempts.items()
                if k[0] == iid and (attempt is None or k[1] == attempt) and a.outcome is None]
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

    async def stats(self) -> dict[str, Any]:
        return {"hosts": len(self._hosts), "started": self.started,
                "running": sum(h.running for h in self._hosts.values()),
                "unacknowledged": sum(len(h.finished) for h in self._hosts.values()),
                "delays": asdict(self.delays)}

    async def shutdown(self) -> None:
        for h in self._hosts.values():
            for att in list(h.attempts.values()):
                if att.timer is not None:
                    att.timer.cancel()


def _read_lines(path: Path | None) -> list[str]:
    try:
        return path.read_text().split() if path is not None else []
    except FileNotFoundError:
        return []


def start_sim_hosts(group: str, hosts: Sequence[SimHostSpec], delays: Delays,
                    detached: bool = False) -> Any:
    """Create the actor serving `hosts` under SIM_PREFIX + group; the scheduler finds it."""
    import ray

    options: dict[str, Any] = {"name": SIM_PREFIX + group, "namespace": NAMESPACE,
                               "num_cpus": 0, "max_concurrency": 10_000, "get_if_exists": True}
    if detached:
        options["lifetime"] = "detached"
    actor = ray.remote(SimHosts).options(**options).remote(
        [asdict(h) for h in hosts], asdict(delays))
    ray.get(actor.ping.remote())
    return actor


__all__ = ["SIM_PREFIX", "Delays", "SimHostSpec", "SimHosts", "start_sim_hosts"]
