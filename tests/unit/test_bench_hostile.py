"""The hostile benchmark's report and chart, from made-up measurements (no VM)."""

import json

from benchmarks import hostile
from benchmarks.chart import bars

LOAD = {"before": {"loadavg_1_5_15": [0.5, 0.4, 0.3], "tryfleet_vms": 1},
        "after": {"loadavg_1_5_15": [2.5, 1.0, 0.5], "tryfleet_vms": 1}}


def made_up(overhead=None):
    quiet = [40.0] * 99 + [60.0]  # p50 40, p99 60 (nearest rank: the 100th of 100)
    hostile_ = [50.0] * 99 + [90.0]  # p50 50, p99 90
    unweighted = [160.0] * 99 + [240.0]  # p50 4x, p99 4x the quiet host's
    return hostile.report(quiet, hostile_, 4, "tcg", LOAD, overhead, "not measured",
                          ["fork bomb: GuestGone"], unweighted)


def test_the_ratios_are_hostile_over_quiet_and_judged_against_the_target(capsys):
    got = made_up()
    assert (got["quiet_p50_ms"], got["quiet_p99_ms"]) == (40.0, 60.0)
    assert (got["hostile_p50_ms"], got["hostile_p99_ms"]) == (50.0, 90.0)
    assert (got["neighbour_p50_ratio"], got["neighbour_p99_ratio"]) == (1.25, 1.5)
    assert got["p99_ratio_met"] is True and got["target_p99_ratio"] == 2.0
    assert (got["unweighted_p50_ratio"], got["unweighted_p99_ratio"]) == (4.0, 4.0)
    assert "target p99 <= 2.0" in capsys.readouterr().out


def test_the_result_keeps_its_slots_and_the_load_and_is_json():
    got = made_up()
    assert got["egress_overhead_p50_ms"] is None and got["egress_overhead_note"]
    assert made_up(overhead=1.7)["egress_overhead_p50_ms"] == 1.7
    assert got["host_load"] == LOAD and got["samples_per_side"] == 100 and got["rounds"] == 4
    assert got["hostile_guests"] == ["fork bomb", "memory bomb", "output flood"]
    assert json.loads(json.dumps(got)) == got


def test_the_chart_sets_the_neighbour_beside_hostile_guests_against_the_quiet_host():
    drawn = {(b.series, b.metric): b.value for b in bars(hostile.CHART, made_up())}
    assert drawn[("quiet host", "neighbour exec true p99")] == 60.0
    assert drawn[("beside hostile guests", "neighbour exec true p99")] == 90.0
    assert drawn[("hostile, CPU weights off", "neighbour exec true p99")] == 240.0


def test_the_egress_overhead_is_read_from_the_egress_scenario_as_it_reports_it():
    overhead, note = hostile.egress_overhead(3)  # a real proxy, relay and audit on loopback
    assert isinstance(overhead, float) and "whole path" in note
