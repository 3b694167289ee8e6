"""Simulated hosts: seeded delays, batched starts, the collect long-poll, cancel; no Ray."""

import asyncio

from tryfleet.nodeagent.actor import pack, unpack
from tryfleet.nodeagent.simhost import Delays, SimHosts, SimHostSpec

FAST = Delays(seed=7, boot_median_ms=1, boot_sigma=0.1, exec_median_ms=1, exec_sigma=0.1)


def req(iid, attempt=1, timeout_s=600.0):
    return {"id": iid, "attempt": attempt, "iteration": {"timeout_s": timeout_s},
            "ids": {"iteration": iid, "attempt": attempt}}


def test_delays_are_seeded_per_iteration_id():
    assert FAST.draw("a") == FAST.draw("a") != FAST.draw("b")
    assert Delays(seed=8).draw("a") != Delays(seed=7).draw("a")
    boot, run = Delays().draw("x")
    assert 0.0005 < boot < 0.05 and 0.0005 < run < 0.05
    assert "median 5 ms" in Delays().describe()


def test_status_looks_like_a_node_agent_status():
    sim = SimHosts([SimHostSpec("a", cpus=8, mem_mib=16384, images=("base", "x"))], FAST)
    st = unpack(asyncio.run(sim.status_all()))["a"]
    assert st["capacity"]["cpus"] == 8 and st["capacity"]["mem_mib"] == 16384
    assert st["images"] == ["base", "x"] and st["pressure"]["cpu_some_avg10"] == 0.0


def test_start_many_then_collect_until_acknowledged():
    async def go():
        sim = SimHosts([SimHostSpec("a"), SimHostSpec("b")], FAST)
        started = unpack(await sim.start_many("a", pack([req("i1"), req("i2"), req("i1")])))
        assert started == [True, True, False]  # the same attempt twice starts once
        first = unpack(await sim.collect("a", pack([]), 5.0))  # returns once one is done
        assert first and first[0]["id"] in ("i1", "i2")
        while (await sim.stats())["running"]:
            await asyncio.sleep(0.005)
        got = unpack(await sim.collect("a", pack([]), 5.0))
        assert {(o["id"], o["state"], o["host"]) for o in got} == {
            ("i1", "SUCCEEDED", "a"), ("i2", "SUCCEEDED", "a")}
        # not acknowledged: sent again; acknowledged: forgotten
        again = unpack(await sim.collect("a", pack([["i1", 1]]), 0.01))
        assert [o["id"] for o in again] == ["i2"]
        assert unpack(await sim.collect("a", pack([["i2", 1]]), 0.01)) == []
        assert unpack(await sim.attempts("a")) == []
        assert unpack(await sim.collect("b", pack([]), 0.01)) == []  # other hosts apart

    asyncio.run(go())


def test_cancel_and_timeout():
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=5000, exec_sigma=0.01)

    async def go():
        sim = SimHosts([SimHostSpec("a")], slow)
        await sim.start_many("a", pack([req("c"), req("t", timeout_s=0.02)]))
        assert await sim.cancel("a", "c", 1) == 1
        got, acks = {}, []
        while len(got) < 2:
            for o in unpack(await sim.collect("a", pack(acks), 5.0)):
                got[o["id"]] = o["state"]
                acks.append([o["id"], o["attempt"]])
        assert got == {"c": "CANCELLED", "t": "TIMED_OUT"}

    asyncio.run(go())


def test_a_removed_host_is_gone_for_good_also_after_a_restart(tmp_path):
    gone = tmp_path / "removed"

    async def go():
        sim = SimHosts([SimHostSpec("a"), SimHostSpec("b")], FAST, str(gone))
        await sim.start_many("a", pack([req("x")]))
        assert await sim.remove("a") == 1  # its running attempt went with it
        assert set(unpack(await sim.status_all())) == {"b"}
        try:
            await sim.collect("a", pack([]), 0.01)
        except KeyError as err:
            assert "no simulated host 'a'" in str(err)
        else:
            raise AssertionError("a call naming a removed host must fail")
        again = SimHosts([SimHostSpec("a"), SimHostSpec("b")], FAST, str(gone))  # a restart
        assert set(unpack(await again.status_all())) == {"b"}
        assert await again.pid() == await sim.pid() > 0

    asyncio.run(go())
