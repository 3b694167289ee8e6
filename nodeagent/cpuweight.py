"""CPU weight by behaviour: a VM that keeps the CPU busy yields it to VMs that want it in
short bursts.

Every VM starts at libvirt's default weight (cpu_shares 1024, its cgroup's). A VM drops to
LOW_SHARES while one of its commands has run longer than LONG_COMMAND_S, or while it keeps at
least BUSY_FRACTION of a core busy with no command of the host's running (what a command
left behind in the background: a fork bomb that returned at once) for BUSY_SAMPLES samples in
a row; it is back at the default once neither holds. Weights are relative and
work-conserving: a busy VM alone on its host still gets every idle cycle; it only waits while
an interactive neighbour's short command runs. Measured by `python -m benchmarks hostile`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import HypervisorError
from .hypervisor import Hypervisor
from .sandbox import Sandbox

log = logging.getLogger("tryfleet.nodeagent")

DEFAULT_SHARES = 1024
LOW_SHARES = 64
LONG_COMMAND_S = 1.0
BUSY_FRACTION = 0.3
BUSY_SAMPLES = 3
INTERVAL_S = 0.5


def shares_for(command_age_s: float | None, busy: Sequence[float]) -> int:
    """The weight of a VM whose oldest running command is command_age_s old (None: none runs)
    and whose last samples kept `busy` cores busy (oldest first)."""
    if command_age_s is not None and command_age_s > LONG_COMMAND_S:
        return LOW_SHARES
    recent = busy[-BUSY_SAMPLES:]
    if command_age_s is None and len(recent) == BUSY_SAMPLES and \
            min(recent) >= BUSY_FRACTION:
        return LOW_SHARES
    return DEFAULT_SHARES


@dataclass
class _Seen:
    cpu_ns: int
    at: float
    busy: list[float] = field(default_factory=list)
    shares: int = DEFAULT_SHARES


class CpuWeights:
    """Samples the live VMs every INTERVAL_S and sets each one's weight (shares_for)."""

    def __init__(self, hv: Hypervisor, live: Callable[[], list[Sandbox]]) -> None:
        self._hv, self._live = hv, live
        self._seen: dict[str, _Seen] = {}
        self.paused = False  # every VM at the default weight (the benchmark's baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cpu-weights")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            try:
                self.step(time.monotonic())
            except Exception:  # a bad sample must not end the weighing of every VM
                log.exception("weighing the VMs' CPU use failed")

    def step(self, now: float) -> dict[str, int]:
        """One sample of every live VM; the weight each has now."""
        boxes = {b.name: b for b in self._live() if not b.destroyed}
        for gone in set(self._seen) - set(boxes):
            del self._seen[gone]
        out = {}
        for name, box in boxes.items():
            cpu_ns = self._hv.cpu_time_ns(name)
            if cpu_ns is None:
                continue
            seen = self._seen.get(name)
            if seen is None:
                self._seen[name] = seen = _Seen(cpu_ns, now)
            elif now > seen.at:
                seen.busy = [*seen.busy, (cpu_ns - seen.cpu_ns) / 1e9 / (now - seen.at)][
                    -BUSY_SAMPLES:]
                seen.cpu_ns, seen.at = cpu_ns, now
            since = box.command_since
            want = DEFAULT_SHARES if self.paused else \
                shares_for(None if since is None else now - since, seen.busy)
            if want != seen.shares:
                with contextlib.suppress(HypervisorError):  # gone meanwhile
                    self._hv.set_cpu_shares(name, want)
                    seen.shares = want
            out[name] = seen.shares
        return out


__all__ = ["DEFAULT_SHARES", "LOW_SHARES", "CpuWeights", "shares_for"]
