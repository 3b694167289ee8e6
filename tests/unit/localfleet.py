"""A whole fleet in this process: the real Scheduler (engine, ledger, dispatch) on an event loop
in a thread, simulated hosts as its only hosts, and a caller of the scheduler's methods on that
loop instead of through Ray (what the gateway calls over Ray)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, Delays, SimHosts, SimHostSpec
from tryfleet.scheduler.service import Scheduler
from tryfleet.wire import AttemptKey, Output, StartRequest, pack, unpack

FAST = Delays(seed=3, boot_median_ms=1, boot_sigma=0.2, exec_median_ms=2, exec_sigma=0.2)


class Local:
    """handle.method.remote(*args) -> a future of obj.method(*args) on the running loop."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._obj, name)
        return types.SimpleNamespace(remote=lambda *args: asyncio.ensure_future(fn(*args)))


class Printing(SimHosts):
    """Simulated hosts whose attempts print `script` (stdout) while they run, in two halves, and
    that answer the node agent's `output` call as a real host does. Each start request is kept
    (decoded from its bytes) in `requests`."""

    def __init__(self, hosts: list[SimHostSpec], delays: Delays, script: bytes = b"") -> None:
        super().__init__(hosts, delays)
        self.script = script
        self.requests: list[StartRequest] = []

    def _start(self, h: Any, req: StartRequest) -> bool:
        self.requests.append(req)
        return super()._start(h, req)

    def _finish(self, h: Any, att: Any, *args: Any) -> None:
        super()._finish(h, att, *args)
        if att.outcome is not None and att.key in h.finished:
            att.outcome = h.finished[att.key] = dataclasses.replace(att.outcome,
                                                                    stdout=self.script)

    async def output(self, host: str, key: bytes, out_offset: int,
                     err_offset: int) -> bytes | None:
        att = self._host(host).attempts.get(unpack(AttemptKey, key))
        if att is None:
            return None
        printed = self.script if att.outcome else self.script[:len(self.script) // 2]
        return pack(Output(printed[out_offset:], b"", att.outcome is not None))


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class LocalCalls:
    """The scheduler's methods called on its loop; every call is kept in `calls`."""

    def __init__(self, sched: Scheduler, loop: LoopThread) -> None:
        self.sched, self.loop = sched, loop
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def call(self, method: str, *args: Any) -> Any:
        self.calls.append((method, args))
        return self.loop.run(getattr(self.sched, method)(*args))


@contextlib.contextmanager
def local_scheduler(tmp_path: Path, sim: SimHosts | None = None
                    ) -> Iterator[tuple[LocalCalls, Scheduler]]:
    """The real scheduler (its ledger in tmp_path) over `sim`'s hosts (none if None), and a
    caller of its methods: (calls, scheduler)."""
    loop = LoopThread()
    sched = Scheduler(str(tmp_path / "ledger.db"))
    sched.engine.hosts.discover = lambda: []  # no Ray to look in: the hosts are given
    if sim is not None:
        sched.engine.hosts.agents = {SIM_GROUP_PREFIX + "test": Local(sim)}
    try:
        yield LocalCalls(sched, loop), sched
    finally:
        loop.stop()
        sched.ledger.close()


def until(done: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Poll done() until it is true; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not true after {timeout_s}s"
        time.sleep(0.01)


__all__ = ["FAST", "Local", "LocalCalls", "LoopThread", "Printing", "local_scheduler", "until"]
