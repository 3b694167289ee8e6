"""Warm pools: VMs booted (or restored) ahead, per image and size, handed out in microseconds.

Every pooled VM is used once: an iteration takes it, and it is destroyed when the iteration
ends, so nothing one iteration wrote, ran or left in memory reaches the next. A background
worker refills the pools one VM at a time.

How many VMs to keep ready, per key: the configured target, or else as many as were asked
for in the last `window_s` seconds (at most `max_per_key`), and all pooled VMs together
within `budget_mib` of guest memory. A key nobody asked for in a window shrinks back to its
target (0 unless configured).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

from tryfleet.wire import PoolRow

from .sandbox import Sandbox
from .snapshots import PoolKey

log = logging.getLogger("tryfleet.nodeagent")


class WarmPool:
    def __init__(self, fill: Callable[[PoolKey, Callable[[], bool]], Sandbox], budget_mib: int,
                 targets: Mapping[PoolKey, int] | None = None, max_per_key: int = 4,
                 window_s: float = 120.0, start: bool = True) -> None:
        self._fill = fill
        self.budget_mib = budget_mib
        self.targets = dict(targets or {})
        self.max_per_key = max_per_key
        self.window_s = window_s
        self._ready: dict[PoolKey, deque[Sandbox]] = {}
        self._asks: dict[PoolKey, deque[float]] = {}
        self._filling: PoolKey | None = None
        self._failures: dict[PoolKey, tuple[int, float]] = {}
        self.hits = self.misses = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._paused = False
        self._thread = threading.Thread(target=self._worker, name="warm-pool", daemon=True)
        if start:
            self._thread.start()

    # ---- handing out -----------------------------------------------------------------------
    def take(self, key: PoolKey) -> Sandbox | None:
        with self._cond:
            self._asks.setdefault(key, deque()).append(time.monotonic())
            self._paused = False
            ready = self._ready.get(key, deque())
            box = None
            while ready and box is None:
                candidate = ready.popleft()
                box = None if candidate.destroyed else candidate
            if box is None:
                self.misses += 1
            else:
                self.hits += 1
            self._cond.notify_all()
            return box

    def ready(self, key: PoolKey) -> int:
        with self._cond:
            return len(self._ready.get(key, ()))

    def wanted(self, key: PoolKey, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        asks = self._asks.get(key, deque())
        while asks and asks[0] < now - self.window_s:
            asks.popleft()
        return max(self.targets.get(key, 0), min(self.max_per_key, len(asks)))

    def status(self) -> list[PoolRow]:
        with self._cond:
            keys = set(self._ready) | set(self.targets) | set(self._asks)
            return [PoolRow(k.image, k.cpus, k.mem_mib, k.disk_mib,
                            ready=len(self._ready.get(k, ())), wanted=self.wanted(k),
                            filling=self._filling == k)
                    for k in sorted(keys, key=lambda k: k.slug)]

    def idle_mem_mib(self) -> int:
        with self._cond:
            return sum(k.mem_mib * len(q) for k, q in self._ready.items())

    # ---- refilling -------------------------------------------------------------------------
    def _next_key(self) -> PoolKey | None:
        """The key furthest below what it wants that the memory budget still allows."""
        if self._paused:
            return None
        now = time.monotonic()
        used = self.idle_mem_mib()
        best, best_gap = None, 0
        for key in set(self._asks) | set(self.targets):
            _, until = self._failures.get(key, (0, 0.0))
            if until > now:
                continue
            gap = self.wanted(key, now) - len(self._ready.get(key, ()))
            if gap > best_gap and used + key.mem_mib <= self.budget_mib:
                best, best_gap = key, gap
        return best

    def _worker(self) -> None:
        while True:
            with self._cond:
                key = None
                while not self._stopped:
                    key = self._next_key()
                    if key is not None:
                        break
                    self._cond.wait(timeout=1.0)
                    self._shrink()
                if self._stopped or key is None:
                    return
                self._filling = key
            box = None
            try:
                box = self._fill(key, self._aborted)
            except Exception as err:  # a host or image problem: back off, try later
                if self._aborted():
                    continue  # drained or closed mid-fill: the VM is already gone
                fails = self._failures.get(key, (0, 0.0))[0] + 1
                self._failures[key] = (fails, time.monotonic() + min(60.0, 2.0 ** fails))
                log.warning("warm pool: could not prepare a %s VM (%s); retrying later",
                            key.image, err)
            with self._cond:
                self._filling = None
                if box is not None:
                    self._failures.pop(key, None)
                    if self._stopped or self._paused:
                        box.destroy()
                    else:
                        self._ready.setdefault(key, deque()).append(box)
                        self._cond.notify_all()

    def _aborted(self) -> bool:
        """A fill in progress stops at once when the pool is drained or closed."""
        return self._paused or self._stopped

    def _shrink(self) -> None:
        """Destroy ready VMs beyond what their key still wants (called with the lock held)."""
        for key, ready in self._ready.items():
            while len(ready) > self.wanted(key):
                box = ready.pop()
                threading.Thread(target=box.destroy, daemon=True).start()

    def wait_ready(self, key: PoolKey, count: int, timeout_s: float) -> bool:
        """Block until `count` VMs of `key` are ready (benchmarks and tests)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._ready.get(key, ())) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(timeout=remaining)
            return True

    def drain(self) -> None:
        """Destroy every ready VM and refill nothing until the next take()."""
        with self._cond:
            self._paused = True
            self._asks.clear()
            boxes = [b for q in self._ready.values() for b in q]
            self._ready.clear()
        for box in boxes:
            box.destroy()

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            boxes = [b for q in self._ready.values() for b in q]
            self._ready.clear()
            self._cond.notify_all()
        for box in boxes:
            box.destroy()
        if self._thread.is_alive():
            self._thread.join(timeout=120)
