"""suites50's figures, guard and settings, from made-up rows and samples (no Ray, no VM)."""

import pytest

from benchmarks import suites50
from benchmarks.chart import bars
from benchmarks.hostwatch import Guard, HostWatch, Peaks, Sample, settle
from benchmarks.suitestats import jain, summarize
from tryfleet.scheduler.records import Iteration


def sample(cpu=10.0, mem=0.0, used=1000.0, avail=80.0, vms=2):
    return Sample(cpu_psi=cpu, mem_psi=mem, mem_used_mib=used, mem_available_pct=avail, vms=vms)


def test_jain_is_one_when_equal_and_one_over_n_when_one_takes_all():
    assert jain([2.0, 2.0, 2.0]) == pytest.approx(1.0)
    assert jain([5.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain([0.0, 0.0]) is None


def test_summarize_counts_states_and_fairness():
    peaks = Peaks()
    for s in (sample(cpu=20), sample(cpu=80, mem=3, used=5000, vms=9), sample(cpu=50)):
        peaks.add(s)
    t0 = 100.0
    rows = [("suite-00", "SUCCEEDED", 110.0), ("suite-00", "SUCCEEDED", 120.0),
            ("suite-01", "TIMED_OUT", 130.0), ("suite-01", "SUCCEEDED", 120.0),
            ("suite-02", "INFRA_ERROR", 125.0), ("suite-02", "CANCELLED", None)]
    got = summarize(rows, t0, stopped_at=160.0, suites=4, peaks=peaks)
    assert (got["succeeded"], got["failed"], got["timed_out"], got["cancelled"]) == (3, 1, 1, 1)
    assert got["elapsed_s"] == 60.0  # the cancelled one counts until the stop
    assert got["iterations_per_min"] == 3.0
    # goodput: suite-00 2/20, suite-01 1/30, suite-02 0, suite-03 (no rows) 0
    assert got["jain_fairness"] == pytest.approx(round(jain([0.1, 1 / 30, 0, 0]), 4))
    assert (got["cpu_psi_some_avg10_max"], got["mem_psi_some_avg10_max"]) == (80.0, 3.0)
    assert (got["host_mem_peak_mib"], got["vms_peak"]) == (5000, 9)
    assert got["cpu_psi_some_avg10_mean"] == 50.0


def test_guard_trips_once_on_low_memory_or_memory_stalls():
    guard = Guard(min_available_pct=10, max_mem_psi=40)
    assert guard.check(sample()) is None
    assert "memory available" in guard.check(sample(avail=5))
    assert "memory PSI" in guard.check(sample(mem=55))
    readings = iter([sample(), sample(avail=4), sample(avail=3), sample()])
    trips = []
    watch = HostWatch(guard, trips.append, read=lambda: next(readings))
    for _ in range(4):
        watch.sample()
    assert len(trips) == 1 and "4.0%" in trips[0] and watch.tripped == trips[0]
    assert watch.peaks.samples == 4


def test_settle_waits_for_cpu_pressure_to_drop_but_not_forever():
    readings = iter([sample(cpu=60), sample(cpu=30), sample(cpu=5)])
    assert settle(10, below_cpu_psi=10, period_s=0, read=lambda: next(readings)) == 5
    assert settle(0, below_cpu_psi=10, period_s=0, read=lambda: sample(cpu=90)) == 90


def test_unthrottled_admits_a_worker_per_suite_without_pressure_checks():
    assert suites50.scheduler_args("throttled", 50, 2) == {}
    args = suites50.scheduler_args("unthrottled", 50, 2)
    assert args["cpu_overcommit"] == 25 and args["suite_cap"] == 1
    assert min(args["pressure"].values()) > 100  # no PSI percentage ever reaches it
    assert "pressure checks off" in suites50.describe(args)


def test_every_iteration_is_valid_and_has_its_own_id():
    its = [Iteration.from_wire(w) for i in range(3) for w in suites50.iterations(i, 3)]
    assert len({it.id for it in its}) == 9
    assert all(it.mem_mib == suites50.MEM_MIB and it.timeout_s > 0 for it in its)


def test_report_and_chart(capsys):
    th = summarize([("suite-00", "SUCCEEDED", 110.0)], 100.0, 110.0, 1, Peaks())
    un = {**th, "cpu_psi_some_avg10_max": 90.0, "timed_out": 2}
    th["cpu_psi_some_avg10_max"] = 30.0
    got = suites50.report(suites50.QUICK, {"throttled": {**th, "aborted": None},
                                           "unthrottled": {**un, "aborted": "deadline"}})
    assert got["targets_met"] is True
    assert "met" in capsys.readouterr().out
    drawn = {(b.series, b.metric): b.value for b in bars(suites50.CHART, got)}
    assert drawn[("unthrottled", "failed, timed out or stopped")] == 2
    assert drawn[("throttled", "fairness across suites")] == 1.0
    assert drawn[("throttled", "cpu PSI some avg10 max")] == 30.0
    worse = suites50.report(suites50.QUICK, {"throttled": {**un, "aborted": None},
                                             "unthrottled": {**un, "aborted": None}})
    assert worse["targets_met"] is False
