"""Placement as table tests; the arithmetic of each case is in its comment."""

import pytest

from tests.unit.builders import banned_imports
from tryfleet.scheduler import placement as pl
from tryfleet.scheduler.placement import Demand, HostView, Reason, Reservations, Verdict, place


def make_host(name="h1", cpus=8, mem_mib=32768, disk_mib=100_000, **kw):
    return HostView(name=name, cpus=cpus, mem_mib=mem_mib, disk_mib=disk_mib,
                    images=kw.pop("images", frozenset({"base"})), **kw)


def need(cpus=1, mem_mib=512, disk_mib=1024, image="base"):
    return Demand(cpus, mem_mib, disk_mib, image)


@pytest.mark.parametrize("host, reason", [
    # 2 cpus asked, 8 - 7 = 1 free
    (make_host(used_cpus=7), Reason.CPU),
    # 512 MiB asked, 32768 - 32500 = 268 free
    (make_host(used_mem_mib=32500), Reason.MEMORY),
    (make_host(used_disk_mib=99_500), Reason.DISK),
    (make_host(images=frozenset()), Reason.IMAGE),
    (make_host(healthy=False), Reason.UNHEALTHY),
    (make_host(draining=True), Reason.DRAINING),
    (make_host(pressured=True), Reason.PRESSURE),
])
def test_each_filter_names_its_reason(host, reason):
    assert pl.check(need(cpus=2), host) is reason


def test_a_buildable_image_passes_the_image_filter():
    assert pl.check(need(), make_host(images=frozenset(), buildable=frozenset({"base"}))) is None


def test_most_allocated_host_wins():
    # a: (4+1)/8 cpu, (16384+512)/32768 mem -> 0.5703; b: 1/8, 512/32768 -> 0.0703
    hosts = [make_host("b"), make_host("a", used_cpus=4, used_mem_mib=16384)]
    d = place(need(), hosts)
    assert (d.verdict, d.host) == (Verdict.PLACED, "a")
    assert d.score == pytest.approx((5 / 8 + 16896 / 32768) / 2 + pl.LOCALITY_BONUS)


def test_image_locality_beats_slightly_fuller_host():
    # full: 0.1953 packed, no image (buildable); local: 0.0703 + 0.25 -> local wins
    hosts = [make_host("full", used_cpus=2, used_mem_mib=4096, images=frozenset(),
                       buildable=frozenset({"base"})), make_host("local")]
    assert place(need(), hosts).host == "local"


def test_warm_capacity_beats_locality_alone():
    hosts = [make_host("cold", used_cpus=3), make_host("warm", warm={"base": 2})]
    assert place(need(), hosts).host == "warm"


def test_cannot_fit_now_is_wait_not_never():
    d = place(need(cpus=4), [make_host(used_cpus=6), make_host("h2", pressured=True)])
    assert d.verdict is Verdict.WAIT
    assert d.rejected == {"h1": Reason.CPU, "h2": Reason.PRESSURE}


def test_too_big_for_every_host_is_never():
    # 16 cpus asked; the largest host has 8
    d = place(need(cpus=16), [make_host(), make_host("h2", cpus=4)])
    assert d.verdict is Verdict.NEVER and "can never fit" in d.explain()


def test_unknown_image_everywhere_is_never():
    d = place(need(image="gpu"), [make_host(), make_host("h2")])
    assert d.verdict is Verdict.NEVER and d.rejected["h1"] is Reason.IMAGE


def test_too_big_for_one_host_but_busy_elsewhere_is_wait():
    d = place(need(cpus=6), [make_host(cpus=4), make_host("h2", used_cpus=4)])
    assert d.verdict is Verdict.WAIT


def test_no_hosts_at_all_is_never():
    assert place(need(), []).verdict is Verdict.NEVER


def test_ties_are_deterministic():
    assert place(need(), [make_host("zz"), make_host("aa")]).host == "aa"


def test_reserve_counts_until_unreserved_and_unreserve_is_idempotent():
    res = Reservations()
    host = make_host(cpus=2)
    assert res.reserve("it-1", "h1", need(cpus=2))
    assert not res.reserve("it-1", "h1", need(cpus=2))  # same key twice holds once
    assert pl.check(need(), res.apply(host)) is Reason.CPU
    assert res.unreserve("it-1") and not res.unreserve("it-1")
    assert pl.check(need(), res.apply(host)) is None


def test_placement_is_pure():
    assert banned_imports(pl) == set()


def test_reservation_totals_follow_reserve_and_unreserve():
    # 3 reservations of (1 cpu, 512 MiB, 1024 MiB) on h1, one of 2 cpus on h2; then 2 go
    res = Reservations()
    for n in range(3):
        res.reserve(f"a{n}", "h1", need())
    res.reserve("b", "h2", need(cpus=2))
    seen = res.apply(make_host(used_cpus=1))
    assert (seen.used_cpus, seen.used_mem_mib, seen.used_disk_mib) == (4, 1536, 3072)
    res.unreserve("a0")
    res.unreserve("a2")
    seen = res.apply(make_host())
    assert (seen.used_cpus, seen.used_mem_mib, seen.used_disk_mib) == (1, 512, 1024)
    assert res.apply(make_host("h2")).used_cpus == 2
    res.unreserve("a1")
    assert res.apply(make_host()) == make_host() and len(res) == 1
