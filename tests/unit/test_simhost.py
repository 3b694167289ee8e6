"""Simulated hosts: seeded delays, batched starts, the collect long-poll, cancel; no Ray. They
speak the node protocol with the wire records, as a real node agent does."""

import asyncio

import pytest

from tests.waiting import until_async
from tryfleet.nodeagent.simhost import Delays, SimHosts, SimHostSpec
from tryfleet.wire import (
    AttemptInfo,
    AttemptKey,
    HostStatus,
    Ids,
    IterationSpec,
    Outcome,
    Output,
    StartRequest,
    WrongHost,
    pack,
    unpack,
    unpack_list,
    unpack_map,
)

FAST = Delays(seed=7, boot_median_ms=1, boot_sigma=0.1, exec_median_ms=1, exec_sigma=0.1)


def req(iid, attempt=1, timeout_s=600.0):
    return StartRequest(iid, attempt, IterationSpec("base", ("sim",), timeout_s=timeout_s),
                        Ids(iteration=iid, attempt=attempt))


async def collect(sim, host, acks=(), timeout_s=5.0):
    return unpack_list(Outcome, await sim.collect(host, pack(list(acks)), timeout_s))


async def ended(sim, host, n):
    """True once n attempts on host have ended (as its `attempts` answer says)."""
    return sum(a.done for a in unpack_list(AttemptInfo, await sim.attempts(host))) == n


def test_delays_are_seeded_per_iteration_id():
    # Two lognormal draws from random.Random(f"{seed}:{id}"): the same numbers for the same
    # seed and id whatever was drawn before, so a baseline elsewhere draws them too.
    seven = Delays(seed=7)
    assert seven.draw("a") == pytest.approx((0.0032304, 0.0066148), rel=1e-4)
    assert seven.draw("b") != seven.draw("a")
    assert Delays(seed=8).draw("a") == pytest.approx((0.0089895, 0.0042932), rel=1e-4)
    # FAST: medians of 1 ms, sigma 0.1
    assert FAST.draw("a") == pytest.approx((0.00091634, 0.00105757), rel=1e-4)
    assert "median 5 ms" in Delays().describe()


def test_status_all_is_a_host_status_per_host():
    sim = SimHosts([SimHostSpec("a", cpus=8, mem_mib=16384, images=("base", "x"),
                                pressure=(("cpu_some_avg10", 40.0),)), SimHostSpec("b")], FAST)
    got = unpack_map(HostStatus, asyncio.run(sim.status_all()))
    assert sorted(got) == ["a", "b"] and all(isinstance(s, HostStatus) for s in got.values())
    a = got["a"]
    assert (a.host, a.accel, a.capacity.cpus, a.capacity.mem_mib, a.images) == \
        ("a", "sim", 8, 16384, ("base", "x"))
    assert a.pressure.cpu_some_avg10 == 40.0 and a.pressure.io_some_avg10 == 0.0
    assert a.warm == {} and a.pool_mem_mib == 0


def test_start_many_then_collect_until_acknowledged():
    async def go():
        sim = SimHosts([SimHostSpec("a"), SimHostSpec("b")], FAST)
        started = unpack_list(bool, await sim.start_many("a", pack([req("i1"), req("i1")])))
        assert started == [True, False]  # the same attempt twice starts once
        first = await collect(sim, "a")  # returns once one is done
        assert [(o.id, o.state, o.host) for o in first] == [("i1", "SUCCEEDED", "a")]
        assert unpack_list(bool, await sim.start_many("a", pack([req("i2"), req("i1")]))) == \
            [True, False]  # known until acknowledged, though it has ended
        await until_async(lambda: ended(sim, "a", 2))
        got = await collect(sim, "a")
        assert {(o.id, o.state, o.host) for o in got} == {
            ("i1", "SUCCEEDED", "a"), ("i2", "SUCCEEDED", "a")}
        attempts = unpack_list(AttemptInfo, await sim.attempts("a"))
        assert set(attempts) == {AttemptInfo("i1", 1, True), AttemptInfo("i2", 1, True)}
        out = await sim.output("a", pack(AttemptKey("i1", 1)), 0, 0)
        assert unpack(Output, out) == Output(b"", b"", True)
        # not acknowledged: sent again; acknowledged: forgotten
        again = await collect(sim, "a", [AttemptKey("i1", 1)], 0.01)
        assert [o.id for o in again] == ["i2"]
        assert await collect(sim, "a", [AttemptKey("i2", 1)], 0.01) == []
        assert unpack_list(AttemptInfo, await sim.attempts("a")) == []
        assert await sim.output("a", pack(AttemptKey("i1", 1)), 0, 0) is None
        assert await collect(sim, "b", timeout_s=0.01) == []  # other hosts apart

    asyncio.run(go())


def test_cancel_and_timeout():
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=5000, exec_sigma=0.01)

    async def go():
        sim = SimHosts([SimHostSpec("a")], slow)
        await sim.start_many("a", pack([req("c"), req("t", timeout_s=0.02)]))
        assert await sim.cancel("a", "c", 1) == 1
        await until_async(lambda: ended(sim, "a", 2))
        got = await collect(sim, "a")
        assert {o.id: o.state for o in got} == {"c": "CANCELLED", "t": "TIMED_OUT"}

    asyncio.run(go())


def test_a_host_not_in_the_group_is_refused():
    sim = SimHosts([SimHostSpec("a")], FAST)
    with pytest.raises(WrongHost, match="no simulated host 'z'"):
        asyncio.run(sim.start_many("z", pack([req("i1")])))
def test_a_removed_host_is_gone_for_good_also_after_a_restart(tmp_path):
    gone = tmp_path / "removed"

    async def go():
        sim = SimHosts([SimHostSpec("a"), SimHostSpec("b")], FAST, str(gone))
        await sim.start_many("a", pack([req("x")]))
        assert await sim.remove("a") == 1  # its running attempt went with it
        assert set(unpack_map(HostStatus, await sim.status_all())) == {"b"}
        with pytest.raises(WrongHost, match="no simulated host 'a'"):
            await sim.collect("a", pack([]), 0.01, 0.0)
        again = SimHosts([SimHostSpec("a"), SimHostSpec("b")], FAST, str(gone))  # a restart
        assert set(unpack_map(HostStatus, await again.status_all())) == {"b"}
        assert await again.pid() == await sim.pid() > 0

    asyncio.run(go())
