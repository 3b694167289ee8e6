"""The dispatch benchmark's report and chart, from made-up measurements (no Ray)."""

from dataclasses import asdict

from benchmarks import dispatch
from benchmarks.chart import bars
from tryfleet.nodeagent.simhost import SimHosts, SimHostSpec


def test_report_speedups_ceiling_and_chart(capsys):
    ours = {"elapsed_s": 4.0, "submit_s": 0.5, "states": {"SUCCEEDED": 10_000},
            "attempts": 10_000,
            "stats": {"placements": 10_000, "placement_p50_ms": 0.04, "placement_p99_ms": 0.12,
                      "passes": 20, "pass_mean_ms": 50.0, "ledger_commits": 1200,
                      "host_calls": {"start_many": 800, "collect": 1000},
                      "outcomes_collected": 10_000, "outcomes_per_collect": 10.0}}
    # 10,000 in 4 s = 2,500/s; Ray: 10,000 in 50 s = 200/s and in 20 s = 500/s
    got = dispatch._report(10_000, 100, 2, ours, native_s=50.0, over_s=20.0, mean_s=0.01)
    assert got["iterations_per_s"] == 2500.0
    assert (got["speedup"], got["speedup_vs_oversubscribed"]) == (12.5, 5.0)
    assert got["ray_native_ceiling_per_s"] == 200.0  # 2 cpus / 10 ms
    assert "targets" in capsys.readouterr().out
    drawn = {(b.series, b.metric): b.value for b in bars(dispatch.CHART, got)}
    assert drawn[("tryfleet", "throughput")] == 2500.0
    assert drawn[("Ray tasks, num_cpus=1", "throughput")] == 200.0
    assert drawn[("tryfleet", "placement p99")] == 0.12


def test_both_sides_draw_the_same_delays():
    ids = dispatch._ids("it", 3)
    assert ids == ["it-000000", "it-000001", "it-000002"]
    # The simulated hosts get the delays as a dict (start_sim_hosts), the Ray baseline as the
    # object itself: both draw the same delay for each id, and not one delay for all.
    baseline = dispatch._delays()
    hosts = SimHosts([SimHostSpec("h")], asdict(dispatch._delays()))
    assert [hosts.delays.draw(i) for i in ids] == [baseline.draw(i) for i in ids]
    assert len({baseline.draw(i) for i in ids}) == 3
    assert [(w["id"], w["cpus"], w["mem_mib"]) for w in dispatch._wire(ids)] == \
        [(i, 1, 512) for i in ids]
