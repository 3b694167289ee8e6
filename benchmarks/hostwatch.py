"""Watching this host while a scenario runs: PSI, memory, VMs; and a guard that trips.

A HostWatch samples every `period_s` in a thread: cpu and memory PSI `some avg10`, memory in use
(total - available) and the number of QEMU processes. Its guard trips, once, when memory runs
low or memory stalls grow past a limit, and calls `on_trip(reason)` so the scenario can flip the
kill switch before the machine goes down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tryfleet.nodeagent.host import read_pressure

QEMU_NAMES = ("qemu-system-x86_64", "qemu-kvm")


@dataclass(frozen=True, slots=True)
class Sample:
    cpu_psi: float  # cpu some avg10, percent
    mem_psi: float  # memory some avg10, percent
    mem_used_mib: float
    mem_available_pct: float
    vms: int


@dataclass(frozen=True, slots=True)
class Guard:
    """Trip when less than `min_available_pct` of memory is left or memory PSI some avg10
    passes `max_mem_psi`."""

    min_available_pct: float = 10.0
    max_mem_psi: float = 40.0

    def check(self, s: Sample) -> str | None:
        if s.mem_available_pct < self.min_available_pct:
            return (f"memory available fell to {s.mem_available_pct:.1f}% "
                    f"(guard: {self.min_available_pct:g}%)")
        if s.mem_psi > self.max_mem_psi:
            return f"memory PSI some avg10 reached {s.mem_psi:.1f}% (guard: {self.max_mem_psi:g}%)"
        return None


def read_sample(proc_dir: Path = Path("/proc/pressure")) -> Sample:
    psi = read_pressure(proc_dir)
    vm = psutil.virtual_memory()
    vms = 0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in QEMU_NAMES:
            vms += 1
    return Sample(cpu_psi=psi.cpu_some_avg10, mem_psi=psi.memory_some_avg10,
                  mem_used_mib=(vm.total - vm.available) / 2**20,
                  mem_available_pct=100.0 * vm.available / vm.total, vms=vms)


@dataclass
class Peaks:
    mem_psi_max: float = 0.0
    mem_used_peak_mib: float = 0.0
    vms_peak: int = 0
    cpu_psi: list[float] = field(default_factory=list)

    def add(self, s: Sample) -> None:
        self.mem_psi_max = max(self.mem_psi_max, s.mem_psi)
        self.mem_used_peak_mib = max(self.mem_used_peak_mib, s.mem_used_mib)
        self.vms_peak = max(self.vms_peak, s.vms)
        self.cpu_psi.append(s.cpu_psi)

    @property
    def samples(self) -> int:
        return len(self.cpu_psi)

    @property
    def cpu_psi_max(self) -> float:
        return max(self.cpu_psi, default=0.0)

    @property
    def cpu_psi_mean(self) -> float:
        return sum(self.cpu_psi) / len(self.cpu_psi) if self.cpu_psi else 0.0


class HostWatch:
    def __init__(self, guard: Guard, on_trip: Callable[[str], None], period_s: float = 0.5,
                 read: Callable[[], Sample] = read_sample) -> None:
        self.guard = guard
        self.on_trip = on_trip
        self.period_s = period_s
        self.read = read
        self.peaks = Peaks()
        self.tripped: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostwatch", daemon=True)

    def __enter__(self) -> HostWatch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> Sample:
        s = self.read()
        self.peaks.add(s)
        if self.tripped is None:
            reason = self.guard.check(s)
            if reason is not None:
                self.tripped = reason
                self.on_trip(reason)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()


def settle(max_s: float, below_cpu_psi: float = 10.0, period_s: float = 1.0,
           read: Callable[[], Sample] = read_sample) -> float:
    """Wait (up to max_s) until cpu PSI some avg10 is under `below_cpu_psi`, so one measured
    run does not inherit the last one's stalls. Returns the reading it stopped at."""
    waited = 0.0
    while True:
        cpu = read().cpu_psi
        if cpu < below_cpu_psi or waited >= max_s:
            return cpu
        threading.Event().wait(period_s)
        waited += period_s
