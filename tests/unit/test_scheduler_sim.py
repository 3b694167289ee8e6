"""The real scheduler (placement, ledger, dispatch) over simulated hosts in this process:
no Ray. A stand-in for Ray actor handles runs each `.remote()` call on this event loop (a
blocking method in a thread). Where a test needs work to be running while it looks, the
simulated hosts hold it until the test lets it end."""

import asyncio

import pytest

from tests.waiting import until_async
from tryfleet.errors import CannotPlace
from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, Delays, SimHosts, SimHostSpec
from tryfleet.scheduler.records import TERMINAL
from tryfleet.scheduler.service import Scheduler
from tryfleet.wire import AttemptKey

from .localfleet import FAST, Local, cancel_until_ended, end_now, run_until_quiet


class Held(SimHosts):
    """Simulated hosts whose attempts run until release(): then the running ones end at once
    and later ones take their drawn delays."""

    def __init__(self, hosts, delays=FAST):
        super().__init__(hosts, delays)
        self.held = True

    def _start(self, h, req):
        started = super()._start(h, req)
        if started and self.held:
            att = h.attempts[AttemptKey(req.id, req.attempt)]
            att.timer.cancel()
            att.timer = None
        return started

    def release(self):
        self.held = False
        return sum(end_now(self, name) for name in self._hosts)

    def forget(self, host, key):
        """The host no longer knows this attempt (as after a restart of its node agent)."""
        self._host(host).attempts.pop(key)
        self._host(host).running -= 1


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
    async def ended():
        counts = await sched.counts(suite)
        return sum(counts.get(s, 0) for s in TERMINAL) >= n

    await until_async(ended, timeout_s, explain=lambda: sched.ledger.counts(suite))


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

    run_until_quiet(go)


def test_bin_packing_and_capacity_hold(tmp_path):
    async def go():
        sim = Held([SimHostSpec("a", cpus=4), SimHostSpec("b", cpus=4)])
        sched, _ = make(tmp_path, sim)
        await sched.submit(wire(10), "s", "t")
        await until_async(lambda: len(flights(sched.engine)) == 8)
        on = {}
        for f in flights(sched.engine).values():
            on[f.host] = on.get(f.host, 0) + 1
        # 8 cpus for 10 asked
        assert on == {"a": 4, "b": 4} and len(sched.engine.core.state.backlog) == 2
        assert sim.release() == 8  # what was held ran; the two that waited run next
        await until_done(sched, "s", 10)

    run_until_quiet(go)


def test_host_lost_mid_run_its_iterations_finish_elsewhere_and_late_results_are_ignored(
        tmp_path):
    async def go():
        # a and b as equals (ties go to the first name), each served by its own node agent
        gone, other = Held([SimHostSpec("a", cpus=16)]), Held([SimHostSpec("b", cpus=16)])
        sched, _ = make(tmp_path, gone, b=other)
        engine = sched.engine

        def on(host):
            return sorted((iid, w.attempt) for iid, w in flights(engine).items()
                          if w.host == host)

        ids = await sched.submit(wire(6), "s", "t")
        await until_async(lambda: on("a") == [(i, 1) for i in ids])  # bin-packed on one host
        del engine.hosts.agents[SIM_GROUP_PREFIX + "test"]  # a's node agent vanishes
        engine.hosts.mark_lost("a")
        engine._on_lost("a", "host a lost")
        await until_async(lambda: on("b") == [(i, 2) for i in ids])
        # a's first attempts succeed now and report late, through the poll still open to a,
        # while the second attempts run on b: they change nothing
        assert gone.release() == 6
        await until_async(lambda: engine.dispatch.collected == 6)
        assert on("b") == [(i, 2) for i in ids]
        assert other.release() == 6
        await until_done(sched, "s", 6)
        results = await sched.results(ids)
        assert [(r["state"], r["attempts"], r["host"]) for r in results] == \
            [("SUCCEEDED", 2, "b")] * 6
        attempts = await sched.attempts(ids[0])
        assert [(a["host"], a["outcome"]) for a in attempts] == \
            [("a", "RETRIED"), ("b", "SUCCEEDED")]

    run_until_quiet(go)


def test_cancel_a_suite_queued_and_running(tmp_path):
    async def go():
        # fair share on 3 cpus: s-0, keep-0, s-1 run; s-2..4 and keep-1 wait
        sched, _ = make(tmp_path, Held([SimHostSpec("a", cpus=3)]))
        engine = sched.engine
        ids = await sched.submit(wire(5), "s", "t")
        other = await sched.submit(wire(2, prefix="keep"), "k", "t")
        await until_async(lambda: len(flights(engine)) == 3)
        assert sorted(flights(engine)) == [ids[0], ids[1], other[0]]
        assert await sched.cancel(suite="s") == {"queued_cancelled": 3, "running_stopped": 2}
        await until_done(sched, "s", 5, timeout_s=5)
        assert {r["state"] for r in await sched.results(ids)} == {"CANCELLED"}
        # what was not cancelled runs, in the cpus the cancelled ones gave back
        await until_async(lambda: sorted(flights(engine)) == other,
                          explain=lambda: sorted(flights(engine)))
        assert not engine.core.state.backlog

    run_until_quiet(go)


def test_restart_reattaches_to_running_attempts_and_requeues_unknown_ones(tmp_path):
    async def go():
        sim = Held([SimHostSpec("a", cpus=2)])
        first, _ = make(tmp_path, sim)
        ids = await first.submit(wire(3), "s", "t")
        await until_async(lambda: len(flights(first.engine)) == 2)
        assert sorted(flights(first.engine)) == ids[:2]  # 2 cpus: the third waits
        await cancel_until_ended([first.engine._loop_task, *first.engine.dispatch._tasks])
        # the old scheduler died
        forgotten = flights(first.engine)[ids[1]]
        # ... and its host forgot one (hosts know an attempt by its iteration's key)
        sim.forget("a", AttemptKey(forgotten.row.key, forgotten.attempt))
        second, _ = make(tmp_path, sim)
        await second.ping()
        sim.release()
        await until_done(second, "s", 3)
        got = {r["id"]: r["attempts"] for r in await second.results(ids)}
        assert got == {ids[0]: 1, ids[1]: 2, ids[2]: 1}

    run_until_quiet(go)


@pytest.mark.parametrize("kw, match", [({"cpus": 64}, "can never run"),
                                       ({"image": "other"}, "can never run")])
def test_what_can_never_fit_is_refused_at_submit(tmp_path, kw, match):
    async def go():
        sched, _ = make(tmp_path, SimHosts([SimHostSpec("a", cpus=8)], FAST))
        with pytest.raises(CannotPlace, match=match):
            await sched.submit(wire(3, **kw), "s", "t")

    run_until_quiet(go)


class SlowStart(SimHosts):
    """A host that acts on a start only once `go` is set: a cancel can overtake it. Cancels
    that found nothing to stop are counted in `missed`."""

    def __init__(self, hosts, delays):
        super().__init__(hosts, delays)
        self.go = asyncio.Event()
        self.missed = 0

    async def start_many(self, host, payload):
        await self.go.wait()
        return await super().start_many(host, payload)

    async def cancel(self, host, iid, attempt=None):
        stopped = await super().cancel(host, iid, attempt)
        self.missed += stopped == 0
        return stopped


def test_a_cancel_that_overtakes_the_start_is_sent_again(tmp_path):
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=600_000, exec_sigma=0.01)

    async def go():
        sim = SlowStart([SimHostSpec("a", cpus=2)], slow)
        sched, handle = make(tmp_path, sim)
        ids = await sched.submit(wire(2), "s", "t")
        await until_async(lambda: handle.calls.get("start_many"))
        assert len(flights(sched.engine)) == 2  # placed, the start not yet acted on
        assert await sched.cancel(suite="s") == {"queued_cancelled": 0, "running_stopped": 2}
        await until_async(lambda: sim.missed == 2)  # both cancels came before their start
        assert sim.started == 0
        sim.go.set()
        await until_done(sched, "s", 2, timeout_s=5)
        assert {r["state"] for r in await sched.results(ids)} == {"CANCELLED"}

    run_until_quiet(go)


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

    try:
        run_until_quiet(go)
    finally:
        real.shutdown()
