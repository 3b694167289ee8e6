"""A whole fleet in this process: the real Scheduler (engine, ledger, dispatch) on an event loop
in a thread, simulated hosts as its only hosts, and a caller of the scheduler's methods on that
loop instead of through Ray (what the gateway calls over Ray)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import threading
import time
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, Delays, SimHosts, SimHostSpec
from tryfleet.scheduler.service import Scheduler
from tryfleet.wire import AttemptKey, Output, StartRequest, State, pack, unpack

FAST = Delays(seed=3, boot_median_ms=1, boot_sigma=0.2, exec_median_ms=2, exec_sigma=0.2)


class Local:
    """A stand-in for a Ray actor handle: handle.method.remote(*args) -> a future of
    obj.method(*args) on the running loop (a blocking method runs in a thread). How often each
    method was called is kept in `calls`."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._obj, name)

        def remote(*args: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if inspect.iscoroutinefunction(fn):
                return asyncio.ensure_future(fn(*args))
            return asyncio.ensure_future(asyncio.to_thread(fn, *args))

        return types.SimpleNamespace(remote=remote)


def end_now(sim: SimHosts, host: str) -> int:
    """End every attempt still running on `host` of `sim` at once, SUCCEEDED, as its timer
    would have (call it on the loop the attempts run on); how many ended."""
    h = sim._host(host)
    running = [att for att in h.attempts.values() if att.outcome is None]
    for att in running:
        if att.timer is not None:
            att.timer.cancel()
        sim._finish(h, att, State.SUCCEEDED, time.time(), 0.0)
    return len(running)


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


async def cancel_until_ended(tasks: Iterable[asyncio.Task[Any]] | None = None) -> None:
    """Cancel tasks (default: every other task on this loop, such as a scheduler's loop and
    long-polls) until each has ended. Once is not enough on Python 3.11: asyncio.wait_for
    loses a cancel that arrives just as what it waits for completes (the engine's loop, woken
    by a poke, then waits again), so what is still running is cancelled again."""
    pending = set(tasks) if tasks is not None else \
        {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)


def run_until_quiet(main: Any) -> Any:
    """asyncio.run(main()), then every task it left cancelled until it has ended."""
    async def main_then_quiet() -> Any:
        try:
            return await main()
        finally:
            await cancel_until_ended()

    return asyncio.run(main_then_quiet())


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout_s: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.run(cancel_until_ended())
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


__all__ = ["FAST", "Local", "LocalCalls", "LoopThread", "Printing", "cancel_until_ended",
           "end_now", "local_scheduler", "run_until_quiet"]
