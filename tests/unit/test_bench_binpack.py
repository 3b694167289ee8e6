"""The tryfleet side of the binpack benchmark (no Ray): mixes whose packing is known."""

import pytest

from benchmarks import binpack
from benchmarks.binpack import fill, lower_bounds, make_hosts, mix, pack_with_tryfleet
from benchmarks.chart import bars, save_chart
from tryfleet.scheduler.placement import Demand, HostView


def make_host(cpus=16, mem_mib=32768, disk_mib=100_000):
    return HostView(name="host", cpus=cpus, mem_mib=mem_mib, disk_mib=disk_mib,
                    images=frozenset({"base"}))


def need(cpus=1, mem_mib=512, disk_mib=1024):
    return Demand(cpus, mem_mib, disk_mib, "base")


def test_lower_bounds_are_per_resource_ceilings():
    # 5 x (4 cpus, 8192 MiB, 1024 MiB disk): cpus 20/16 -> 2, mem 40960/32768 -> 2,
    # disk 5120/100000 -> 1
    items = [need(4, 8192)] * 5
    assert lower_bounds(items, make_host()) == {"cpus": 2, "mem_mib": 2, "disk_mib": 1}


def test_cpu_bound_mix_fills_two_of_four_hosts():
    # 8 x 2 cpus + 4 x 4 cpus = 32 cpus = 2 full hosts; mem 4096 + 16384 MiB fits in one.
    # Spreading (least-allocated first) would touch all 4 hosts.
    host = make_host()
    items = [need(2, 512), need(4, 4096), need(2, 512)] * 4
    where = pack_with_tryfleet(items, make_hosts(4, host))
    assert max(lower_bounds(items, host).values()) == 2
    assert fill(where, items, host) == {"hosts_used": 2, "unplaced": 0,
                                        "cpu_fill_pct": 100.0, "mem_fill_pct": 31.2}


def test_memory_bound_mix_is_packed_by_memory():
    # 9 x (1 cpu, 4096 MiB): 8 fill a host's 32768 MiB with 8 of 16 cpus; the ninth opens a
    # second host. Lower bound: mem 36864/32768 -> 2, cpus 9/16 -> 1.
    host = make_host()
    items = [need(1, 4096)] * 9
    where = pack_with_tryfleet(items, make_hosts(3, host))
    assert where == ["h00"] * 8 + ["h01"]
    assert lower_bounds(items, host)["mem_mib"] == 2


def test_what_does_not_fit_is_reported_unplaced():
    # one host of 16 cpus: four 4-cpu items fit, the fifth waits
    host = make_host()
    items = [need(4)] * 5
    where = pack_with_tryfleet(items, make_hosts(1, host))
    assert where == ["h00"] * 4 + [None]
    assert fill(where, items, host)["unplaced"] == 1
    # nothing placed: no fill to speak of, rather than 0 %
    assert fill([None], [need()], host) == {"hosts_used": 0, "unplaced": 1,
                                            "cpu_fill_pct": None, "mem_fill_pct": None}


def test_mix_is_seeded_and_skewed_small():
    items = mix(400, seed=7)
    # random.Random(7).choices over SHAPES by weight: these first, on every run
    assert [(d.cpus, d.mem_mib) for d in items[:6]] == [
        (1, 1024), (1, 512), (2, 512), (1, 256), (1, 2048), (1, 1024)]
    assert items != mix(400, seed=8)
    assert {d.cpus for d in items} <= {1, 2, 4}
    assert {d.mem_mib for d in items} <= {256, 512, 1024, 2048, 4096}
    ones, fours = sum(d.cpus == 1 for d in items), sum(d.cpus == 4 for d in items)
    assert ones > 3 * fours
    assert sum(d.mem_mib <= 1024 for d in items) > len(items) / 2


def test_default_mix_packs_within_target():
    items = mix(90)
    bound = max(lower_bounds(items, binpack.HOST).values())
    where = pack_with_tryfleet(items, make_hosts(bound * 2, binpack.HOST))
    used = fill(where, items, binpack.HOST)
    assert used["unplaced"] == 0
    assert used["hosts_used"] / bound <= binpack.TARGET_RATIO


def test_chart_leaves_out_missing_numbers():
    drawn = bars(binpack.CHART, {"hosts_used": 9, "lower_bound": 9, "ray_default_hosts_used": None})
    assert [(b.series, b.metric, b.unit, b.value) for b in drawn] == [
        ("tryfleet", "hosts used", "hosts", 9.0), ("lower bound", "hosts used", "hosts", 9.0)]


def test_chart_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    result = {"machine": {"hostname": "box", "cpus": 2}, "hosts_used": 9, "lower_bound": 9,
              "ray_default_hosts_used": 15, "cpu_fill_pct": 98.0, "ray_cpu_fill_pct": 60.0,
              "mem_fill_pct": 40.0, "ray_mem_fill_pct": 25.0}
    path = tmp_path / "binpack.png"
    assert save_chart(path, "binpack", result, binpack.CHART)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
