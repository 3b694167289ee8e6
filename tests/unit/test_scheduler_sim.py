"""The real scheduler (placement, ledger, dispatch) over simulated hosts in this process:
no Ray. A stand-in for Ray actor handles runs each `.remote()` call on this event loop (a
blocking method in a thread)."""

import asyncio
import inspect
import time
import types

import pytest

from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, Delays, SimHosts, SimHostSpec
from tryfleet.scheduler.records import TERMINAL
from tryfleet.scheduler.service import Scheduler
from tryfleet.wire import AttemptKey

FAST = Delays(seed=3, boot_median_ms=1, boot_sigma=0.2, exec_median_ms=2, exec_sigma=0.2)


class Local:
    """obj.method.remote(*args) -> a future of obj.method(*args) on the running loop."""

    def __init__(self, obj):
        self._obj = obj
        self.calls = {}

    def __getattr__(self, name):
        fn = getattr(self._obj, name)

        def remote(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            if inspect.iscoroutinefunction(fn):
                return asyncio.ensure_future(fn(*args))
            return asyncio.ensure_future(asyncio.to_thread(fn, *args))

        return types.SimpleNamespace(remote=remote)


def make(tmp_path, sim, **more_agents):
    """A scheduler whose node-agent actors are given (there is no Ray to look in)."""
    sched = Scheduler(str(tmp_path / "ledger.db"))
    handle = Local(sim)
    sched.engine.hosts.discover = lambda: []
    sched.engine.hosts.agents = {SIM_GROUP_PREFIX + "test": handle,
                                 **{name: Local(a) for name, a in more_agents.items()}}
    return sched, handle


def flights(engine):
    """The attempts the scheduler has in flight: {iteration id: its Work} (one tenant)."""
    return {w.row.id: w for w in engine.core.state.work.values() if w.host is not None}


def wire(n, prefix="it", **kw):
    return [{"image": "base", "command": ["sim"], "id": f"{prefix}-{i:04d}", **kw}
            for i in range(n)]


async def until_done(sched, suite, n, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while True:
        counts = await sched.counts(suite)
        if sum(counts.get(s, 0) for s in TERMINAL) >= n:
            return
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.01)


def test_many_iterations_few_calls_and_one_attempt_each(tmp_path):
    async def go():
        sim = SimHosts([SimHostSpec(f"h{i}", cpus=8) for i in range(4)], FAST)
        sched, handle = make(tmp_path, sim)
        ids = await sched.submit(wire(300), "s", "t")
        await until_done(sched, "s", 300)
        results = await sched.results(ids)
        assert {r["state"] for r in results} == {"SUCCEEDED"}
        assert {r["attempts"] for r in results} == {1}
        stats = await sched.stats()
        assert stats["placements"] == 300 and stats["placement_p99_ms"] > 0
        # one start call per host and pass, one long-poll per batch of outcomes
        assert handle.calls["start_many"] < 300 / 2 and handle.calls["collect"] < 300 / 2
        assert stats["ledger_commits"] < 300
        state = sched.engine.core.state
        assert not state.work and not state.backlog and len(state.reservations) == 0

    asyncio.run(go())


def test_bin_packing_and_capacity_hold(tmp_path):
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=300, exec_sigma=0.01)

    async def go():
        sim = SimHosts([SimHostSpec("a", cpus=4), SimHostSpec("b", cpus=4)], slow)
        sched, _ = make(tmp_path, sim)
        await sched.submit(wire(10), "s", "t")
        await asyncio.sleep(0.1)
        on = {}
        for f in flights(sched.engine).values():
            on[f.host] = on.get(f.host, 0) + 1
        # 8 cpus for 10 asked
        assert on == {"a": 4, "b": 4} and len(sched.engine.core.state.backlog) == 2
        await until_done(sched, "s", 10)

    asyncio.run(go())


def test_host_lost_mid_run_its_iterations_finish_elsewhere_and_late_results_are_ignored(
        tmp_path):
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=200, exec_sigma=0.01)

    async def go():
        sim = SimHosts([SimHostSpec("a", cpus=16), SimHostSpec("b", cpus=16)], slow)
        sched, _ = make(tmp_path, sim)
        ids = await sched.submit(wire(6), "s", "t")
        await asyncio.sleep(0.05)
        assert {f.host for f in flights(sched.engine).values()} == {"a"}  # bin-packed on one host
        gone = sim._hosts.pop("a")  # the host vanishes; its attempts still finish there
        sched.engine.hosts.mark_lost("a")
        sched.engine._on_lost("a", "host a lost")
        await until_done(sched, "s", 6)
        while gone.running:  # the first attempts report late, to nobody
            await asyncio.sleep(0.01)
        results = await sched.results(ids)
        assert [(r["state"], r["attempts"], r["host"]) for r in results] == \
            [("SUCCEEDED", 2, "b")] * 6
        attempts = await sched.attempts(ids[0])
        assert [(a["host"], a["outcome"]) for a in attempts] == \
            [("a", "RETRIED"), ("b", "SUCCEEDED")]

    asyncio.run(go())


def test_cancel_a_suite_queued_and_running(tmp_path):
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=5000, exec_sigma=0.01)

    async def go():
        # fair share on 3 cpus: s-0, keep-0, s-1 run; s-2..4 and keep-1 wait
        sim = SimHosts([SimHostSpec("a", cpus=3)], slow)
        sched, _ = make(tmp_path, sim)
        ids = await sched.submit(wire(5), "s", "t")
        other = await sched.submit(wire(2, prefix="keep"), "k", "t")
        await asyncio.sleep(0.05)
        assert await sched.cancel(suite="s") == {"queued_cancelled": 3, "running_stopped": 2}
        await until_done(sched, "s", 5, timeout_s=5)
        assert {r["state"] for r in await sched.results(ids)} == {"CANCELLED"}
        # what was not cancelled runs, in the cpus the cancelled ones gave back
        engine = sched.engine
        assert not engine.core.state.backlog and sorted(flights(engine)) == other

    asyncio.run(go())


def test_restart_reattaches_to_running_attempts_and_requeues_unknown_ones(tmp_path):
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=150, exec_sigma=0.01)

    async def go():
        sim = SimHosts([SimHostSpec("a", cpus=2)], slow)
        first, _ = make(tmp_path, sim)
        ids = await first.submit(wire(3), "s", "t")
        await asyncio.sleep(0.03)
        for task in [first.engine._loop_task, *first.engine.dispatch._tasks]:
            task.cancel()  # the old scheduler dies
        forgotten = flights(first.engine)[ids[1]]
        lost = sim._hosts["a"].attempts.pop(AttemptKey(forgotten.row.key, forgotten.attempt))
        lost.timer.cancel()  # ... and its host forgot one attempt
        second, _ = make(tmp_path, sim)
        await second.ping()
        await until_done(second, "s", 3)
        got = {r["id"]: r["attempts"] for r in await second.results(ids)}
        assert got == {ids[0]: 1, ids[1]: 2, ids[2]: 1}

    asyncio.run(go())


@pytest.mark.parametrize("kw, match", [({"cpus": 64}, "can never run"),
                                       ({"image": "other"}, "can never run")])
def test_what_can_never_fit_is_refused_at_submit(tmp_path, kw, match):
    async def go():
        sched, _ = make(tmp_path, SimHosts([SimHostSpec("a", cpus=8)], FAST))
        with pytest.raises(Exception, match=match):
            await sched.submit(wire(3, **kw), "s", "t")

    asyncio.run(go())


class SlowStart(SimHosts):
    """A host that takes its time to act on a start: a cancel can overtake it."""

    async def start_many(self, host, payload):
        await asyncio.sleep(0.2)
        return await super().start_many(host, payload)


def test_a_cancel_that_overtakes_the_start_is_sent_again(tmp_path):
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=10_000, exec_sigma=0.01)

    async def go():
        sched, _ = make(tmp_path, SlowStart([SimHostSpec("a", cpus=2)], slow))
        ids = await sched.submit(wire(2), "s", "t")
        await asyncio.sleep(0.05)
        assert len(flights(sched.engine)) == 2  # placed, the start not yet acted on
        assert await sched.cancel(suite="s") == {"queued_cancelled": 0, "running_stopped": 2}
        await until_done(sched, "s", 2, timeout_s=5)
        assert {r["state"] for r in await sched.results(ids)} == {"CANCELLED"}

    asyncio.run(go())


def test_a_real_node_agent_and_simulated_hosts_are_reached_alike(tmp_path, monkeypatch):
    """One code path: a real node agent (on the fake hypervisor) and a group of simulated
    hosts, both found as node-agent actors and asked the same calls."""
    from tryfleet.nodeagent.actor import NodeActor
    from tryfleet.scheduler import dispatch

    monkeypatch.setattr(dispatch, "WAIT_CHUNK_S", 0.2)  # long-polls end soon after the test
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    real = NodeActor(str(tmp_path / "node"), "h1", fake=True, fake_images=("base",))

    async def go():
        sim = SimHosts([SimHostSpec("s1", cpus=4, images=("simonly",))], FAST)
        sched, _ = make(tmp_path, sim, **{"tryfleet-node-h1": real})
        ids = await sched.submit(wire(1, prefix="real", command=["true"])
                                 + wire(1, prefix="sim", image="simonly"),
                                 "s", "t")
        await until_done(sched, "s", 2)
        results = await sched.results(ids)
        assert [(r["state"], r["host"]) for r in results] == \
            [("SUCCEEDED", "h1"), ("SUCCEEDED", "s1")]
        hosts = {h["host"]: h for h in (await sched.status())["hosts"]}
        assert (hosts["h1"]["accel"], hosts["s1"]["accel"]) == ("tcg", "sim")
        for task in [sched.engine._loop_task, *sched.engine.dispatch._tasks]:
            task.cancel()

    try:
        asyncio.run(go())
    finally:
        real.shutdown()
