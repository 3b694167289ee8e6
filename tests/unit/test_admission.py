from tryfleet.scheduler.admission import (
    Candidate,
    Policy,
    PressureLimits,
    Usage,
    admit,
    blocked,
    under_pressure,
)
from tryfleet.scheduler.placement import Demand

D = Demand(1, 512, 1024, "base")


def cands(suite, n, start=0, limits=(), priority=0, tenant="t"):
    return [Candidate(f"{suite}-{i}", suite, tenant, priority, start + i, tuple(limits), D)
            for i in range(n)]


def slots(n):
    """A fleet with room for n iterations."""
    left = [n]

    def try_place(c):
        if left[0] == 0:
            return False
        left[0] -= 1
        return True
    return try_place


def test_shared_limit_holds_fleet_wide():
    admitted = admit(cands("a", 5, limits=["ci-db"]) + cands("b", 5, 100, ["ci-db"]),
                     Usage(), Policy(limits={"ci-db": 2}), slots(100))
    assert len(admitted) == 2


def test_limit_counts_what_already_runs():
    usage = Usage()
    for c in cands("x", 2, 500, ["ci-db"]):
        usage.add(c)
    assert admit(cands("a", 3, limits=["ci-db"]), usage, Policy(limits={"ci-db": 3}),
                 slots(10)) == cands("a", 1, limits=["ci-db"])


def test_fair_share_one_huge_suite_does_not_starve_small_ones():
    # huge submitted first with 1000; 49 small suites with 2 each; room for 50
    queue = cands("huge", 1000)
    for s in range(49):
        queue += cands(f"small{s}", 2, 2000 + s * 10)
    admitted = admit(queue, Usage(), Policy(), slots(50))
    suites = {c.suite for c in admitted}
    assert len(suites) == 50  # every suite got one slot, huge included


def test_fifo_inside_a_suite():
    admitted = admit(cands("a", 5), Usage(), Policy(), slots(3))
    assert [c.id for c in admitted] == ["a-0", "a-1", "a-2"]


def test_priority_is_strict():
    queue = cands("low", 5) + cands("high", 5, 100, priority=10)
    admitted = admit(queue, Usage(), Policy(), slots(5))
    assert {c.suite for c in admitted} == {"high"}


def test_suite_and_tenant_caps():
    policy = Policy(suite_caps={"a": 2}, default_tenant_cap=3)
    queue = cands("a", 5, tenant="t1") + cands("b", 5, 100, tenant="t1")
    admitted = admit(queue, Usage(), policy, slots(100))
    assert sum(c.suite == "a" for c in admitted) == 2 and len(admitted) == 3
    assert blocked(cands("c", 1, tenant="t1")[0], _usage_of(admitted), policy) == \
        "tenant t1 at its cap of 3"


def _usage_of(cs):
    u = Usage()
    for c in cs:
        u.add(c)
    return u


def test_a_suite_that_does_not_fit_waits_and_others_go_on():
    def only_b(c):
        return c.suite == "b"
    admitted = admit(cands("a", 3) + cands("b", 3, 100), Usage(), Policy(), only_b)
    assert {c.suite for c in admitted} == {"b"} and len(admitted) == 3


def test_pressure_hysteresis():
    lim = PressureLimits(cpu_high=80, cpu_low=40)
    assert not under_pressure(False, {"cpu_some_avg10": 70}, lim)
    assert under_pressure(False, {"cpu_some_avg10": 85}, lim)
    assert under_pressure(True, {"cpu_some_avg10": 50}, lim)  # still above the low mark
    assert not under_pressure(True, {"cpu_some_avg10": 30}, lim)


def test_more_suites_than_room_take_turns():
    # 4 suites of 3 submitted at once, room for one at a time: round robin, not a-a-a-b-b-b
    usage, policy, order = Usage(), Policy(), []
    queue = []
    for k, s in enumerate("abcd"):
        queue += cands(s, 3, start=k * 10)
    while queue:
        (c,) = admit(queue, usage, policy, slots(1))
        order.append(c.suite)
        queue.remove(c)
        usage.remove(c)
    assert order == list("abcd") * 3


def test_a_placement_taken_back_does_not_count_as_a_turn():
    usage = Usage()
    a0, b0 = cands("a", 1)[0], cands("b", 1, start=5)[0]
    usage.add(a0)
    usage.remove(a0, ran=False)
    assert admit([a0, b0], usage, Policy(), slots(1)) == [a0]


def test_prune_forgets_only_suites_that_are_done():
    usage = Usage()
    for c in cands("a", 1) + cands("b", 2, 10) + cands("c", 1, 20):
        usage.add(c)
    usage.remove(cands("a", 1)[0])
    usage.remove(cands("c", 1, 20)[0])
    usage.prune(queued={"c"})
    assert set(usage.started) == {"b", "c"} and usage.started["b"] == 2
