"""The soak's pure parts: the ledger checks on hand-made ledgers (the real Ledger class), the
chaos plan and its runner, the submit schedule, the ownership rules of the real mode and the
exit verdict; no Ray, no VM."""

import dataclasses
import json
import sqlite3
from contextlib import closing

import pytest

from benchmarks import soak
from benchmarks.chart import bars
from benchmarks.soak import chaos, checks, drive, real
from tryfleet.scheduler.core import Launch, Requeue
from tryfleet.scheduler.ledger import Ledger
from tryfleet.scheduler.records import Iteration
from tryfleet.wire import Capacity, HostStatus, PoolRow, Pressure

from .builders import end


def it(iid):
    return Iteration(image="base", command=("true",), id=iid)


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


def start(led, iid, host="h1"):
    """The next attempt of iid, running on host: its number."""
    row = led.get_row(iid)
    assert led.launch([Launch(row.key, row.attempt + 1, host, row)]) == [True]
    return row.attempt + 1


def lose(led, iid, attempt, error):
    """The attempt ended in an infrastructure error and went back to the queue."""
    key = led.get_row(iid).key
    assert led.commit([Requeue(key, attempt, error, runs_left=1, infra_tries=1)]) == [True]


def ok(led, iid):
    """The next attempt of iid succeeds: its number."""
    attempt = led.get_row(iid).attempt + 1
    end(led, [iid])
    return attempt


def sql(led, statement, *args):
    with closing(sqlite3.connect(led.path)) as db:
        db.execute(statement, args)
        db.commit()


# ---- the ledger checks -----------------------------------------------------------------------
def test_a_clean_ledger_passes_and_retries_are_counted(ledger):
    ledger.submit([it("a"), it("b")], "soak", "t")
    ok(ledger, "a")
    lose(ledger, "b", start(ledger, "b"), "host h1 lost")
    ok(ledger, "b")
    got = checks.check(ledger.path, ["a", "b"])
    assert (got.not_terminal, got.double_committed, got.mismatched) == ((), (), ())
    assert got.states == {"SUCCEEDED": 2}
    assert got.attempts_per_iteration == {1: 1, 2: 1}
    assert got.retried == 1 and got.retry_reasons == {"host # lost": 1}


def test_queued_running_and_missing_ids_are_not_terminal(ledger):
    ledger.submit([it("q"), it("r"), it("done")], "soak", "t")
    start(ledger, "r")
    ok(ledger, "done")
    got = checks.check(ledger.path, ["q", "r", "done", "never-recorded"])
    assert got.not_terminal == ("never-recorded", "q", "r")
    assert got.states == {"MISSING": 1, "QUEUED": 1, "RUNNING": 1, "SUCCEEDED": 1}
    assert [e["iteration"]["id"] if e["iteration"] else None
            for e in got.evidence["not_terminal"]] == [None, "q", "r"]


def test_two_attempts_with_a_committed_state_are_a_double_commit(ledger):
    ledger.submit([it("d")], "soak", "t")
    first = start(ledger, "d")
    lose(ledger, "d", first, "host h1 lost")
    ok(ledger, "d")
    # the first attempt's row says it committed a result too
    sql(ledger, "UPDATE attempts SET outcome = 'SUCCEEDED' WHERE attempt = ?", first)
    got = checks.check(ledger.path, ["d"])
    assert got.double_committed == ("d",) and got.not_terminal == ()
    assert [a["outcome"] for a in got.evidence["double_committed"][0]["attempts"]] == \
        ["SUCCEEDED", "SUCCEEDED"]


def test_an_attempt_placed_after_the_commit_is_a_double_commit(ledger):
    ledger.submit([it("e")], "soak", "t")
    ok(ledger, "e")
    sql(ledger, "UPDATE iterations SET attempt = 2 WHERE id = 'e'")  # result_attempt stays 1
    assert checks.check(ledger.path, ["e"]).double_committed == ("e",)


def test_a_committed_attempt_recorded_with_another_state_is_mismatched(ledger):
    ledger.submit([it("m")], "soak", "t")
    attempt = ok(ledger, "m")
    sql(ledger, "UPDATE attempts SET outcome = 'FAILED' WHERE attempt = ?", attempt)
    got = checks.check(ledger.path, ["m"])
    assert got.mismatched == ("m",) and got.double_committed == ()


def test_an_attempt_left_open_under_a_terminal_iteration_is_reported(ledger):
    ledger.submit([it("o")], "soak", "t")
    attempt = ok(ledger, "o")
    sql(ledger, "UPDATE attempts SET ended_at = NULL WHERE attempt = ?", attempt)
    assert checks.check(ledger.path, ["o"]).open_attempts == (("o", attempt),)


def test_resume_is_the_first_commit_after_a_kill(ledger):
    ledger.submit([it("a"), it("b")], "soak", "t")
    ok(ledger, "a")
    ok(ledger, "b")
    sql(ledger, "UPDATE iterations SET ended_at = 100.0, duration_s = 1.0 WHERE id = 'a'")
    sql(ledger, "UPDATE iterations SET ended_at = 103.5, duration_s = 3.0 WHERE id = 'b'")
    got = checks.timing(ledger.path, [101.0, 200.0])
    assert got["resume_s"] == [2.5, None] and got["last_end"] == 103.5
    assert (got["iteration_p50_s"], got["iteration_max_s"]) == (3.0, 3.0)


def test_mask_groups_alike_errors():
    assert checks.mask("attempt 2 of soak-000017 is unknown on sim004") == \
        checks.mask("attempt 1 of soak-000923 is unknown on sim031") == \
        "attempt # of soak-# is unknown on #"


# ---- the chaos plan and its runner -------------------------------------------------------------
def test_the_plan_is_seeded_counted_in_order_within_the_window():
    counts = {"scheduler": 5, "node": 20, "remove": 2}
    events = chaos.plan(7, 10_000, counts, {"node": 10, "remove": 50})
    assert events == chaos.plan(7, 10_000, counts, {"node": 10, "remove": 50})
    assert events != chaos.plan(8, 10_000, counts, {"node": 10, "remove": 50})
    assert {k: sum(e.kind == k for e in events) for k in counts} == counts
    assert [e.at_done for e in events] == sorted(e.at_done for e in events)
    assert all(500 <= e.at_done <= 8500 for e in events)
    assert all(0 <= e.target < 10 for e in events if e.kind == "node")
    removed = [e.target for e in events if e.kind == "remove"]
    assert len(set(removed)) == 2


def test_every_other_event_of_a_kind_with_points_lands_on_one():
    submits = [drive.due(k, 2, 500) for k in range(20)]
    events = chaos.plan(3, 10_000, {"scheduler": 4}, points={"scheduler": submits})
    on_submit = [e.at_done in submits for e in events]
    assert sum(on_submit) >= 2


def test_more_distinct_targets_than_there_are_is_refused():
    with pytest.raises(ValueError, match="need 3 targets"):
        chaos.plan(1, 100, {"remove": 3}, {"remove": 2})


def test_the_runner_fires_events_as_progress_passes_them_and_records_failures():
    done = iter(range(0, 1000, 5))
    fired = []

    def boom(ev):
        raise RuntimeError("no such host")

    events = [chaos.Event(3, "node", 1), chaos.Event(10, "remove", 4),
              chaos.Event(12, "node", 2)]
    runner = chaos.Chaos(events, {"node": lambda ev: fired.append(ev.target) or {"pid": 9},
                                  "remove": boom}, lambda: next(done))
    runner.run()
    assert runner.finished and fired == [1, 2]
    assert [r["done_when_fired"] >= r["at_done"] for r in runner.records] == [True] * 3
    assert runner.records[1]["error"] == "RuntimeError: no such host"
    assert chaos.count(runner.records, "node") == 2 and chaos.count(runner.records, "remove") == 0


# ---- submitting --------------------------------------------------------------------------------
def test_chunks_cover_the_work_and_stay_lead_chunks_ahead():
    work = [{"id": str(i)} for i in range(10)]
    parts = drive.chunks_of(work, 3)
    assert [len(p) for p in parts] == [4, 4, 2] and [w for p in parts for w in p] == work
    assert [drive.due(k, 2, 4) for k in range(4)] == [0, 0, 0, 4]


# ---- the real mode: what belongs to this run -------------------------------------------------
def test_owners_are_found_by_the_pids_of_the_runs_agent(tmp_path):
    for owner, pid in (("aa11", 100), ("bb22", 200), ("cc33", 300)):
        (tmp_path / owner).mkdir()
        (tmp_path / owner / "owner.json").write_text(json.dumps({"pid": pid}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "owner.json").write_text("{")
    assert real.owners_of(tmp_path, {100, 300}) == {"aa11", "cc33"}


def test_vms_of_agents_with_another_data_dir_are_at_risk(tmp_path):
    (tmp_path / "aa11").mkdir()  # registered here: a reaper here knows whether it is alive
    found = {"tryfleet-aa11-3": "aa11", "tryfleet-ffff-1": "ffff", "tryfleet-odd": None,
             "tryfleet-mine-2": "mine"}
    assert real.at_risk(found, tmp_path, {"mine"}) == ["tryfleet-ffff-1", "tryfleet-odd"]


def test_vms_beyond_the_running_and_the_pool_are_unaccounted():
    pool = (PoolRow("base", 1, 512, None, ready=1, wanted=2, filling=True),
            PoolRow("base", 2, 512, None, ready=0, wanted=0, filling=False))
    status = HostStatus("h1", 7, "tcg", Capacity("h1", 2, 4096, 1000), Pressure(), running=1,
                        vms=("a", "b", "c", "d"), pool=pool)
    assert real.unaccounted(status) == 1  # 4 VMs: 1 running, 1 ready and 1 filling in the pool
    assert real.unaccounted(dataclasses.replace(status, vms=("a",))) == 0


# ---- the verdict and the chart ----------------------------------------------------------------
def test_any_check_not_zero_fails_the_soak():
    clean = dict.fromkeys(soak.CHECKS, 0)
    assert not soak.failed(clean)
    for key in soak.CHECKS:
        assert soak.failed({**clean, key: 1})
    assert soak.failed({k: 0 for k in soak.CHECKS if k != "stuck"})


def test_chart_shows_the_checks_throughput_and_recovery():
    result = {**dict.fromkeys(soak.CHECKS, 0), "iterations_per_s": 250.0,
              "chaos_done": {"scheduler": 5, "node": 20, "destroy": 0},
              "retried_attempts": 300,
              "scheduler_recover_s": [1.5, 2.5, 2.0], "scheduler_resume_s": [1.0, None, 0.5]}
    drawn = {(b.series, b.metric): b.value for b in bars(soak.CHART, result)}
    assert drawn[("checks", "lost")] == 0.0 and drawn[("checks", "leaked VMs")] == 0.0
    assert drawn[("chaos", "node kills")] == 20.0 and ("chaos", "VMs destroyed") not in drawn
    assert drawn[("tryfleet under chaos", "throughput")] == 250.0
    assert drawn[("scheduler restart", "recover max")] == 2.5
    assert drawn[("scheduler restart", "resume max")] == 1.0


def test_mask_keeps_the_first_line_without_terminal_colours():
    ray_error = "host sim004 lost: \x1b[36mray::SimHosts.collect()\x1b[39m (pid=12)\n  File x"
    assert checks.mask(ray_error) == "host # lost: ray::SimHosts.collect() (pid=#)"


def test_the_run_waits_for_the_work_and_gives_up_only_when_nothing_moves_after_the_chaos():
    ran = chaos.Chaos([chaos.Event(1, "node", 0)], {}, lambda: 0)
    ran.records.append({"done_at": 100.0})
    why = drive._why_stop
    assert why(True, ran, 60.0, last_move=150.0, past_deadline=False, now=151.0) == \
        "every iteration ended"
    # work still moving 100 s after the last kill: keep waiting
    assert why(False, ran, 60.0, last_move=199.0, past_deadline=False, now=200.0) == ""
    assert why(False, ran, 60.0, last_move=120.0, past_deadline=False, now=181.0) == \
        "nothing ended for 60 s after the last chaos event"
    pending = chaos.Chaos([chaos.Event(1, "node", 0)], {}, lambda: 0)  # not fired yet
    assert why(False, pending, 60.0, last_move=100.0, past_deadline=False, now=200.0) == ""
    assert why(False, pending, 60.0, last_move=100.0, past_deadline=False, now=221.0) == \
        "nothing ended for 120 s while chaos went on"
    assert why(False, pending, 60.0, last_move=100.0, past_deadline=True, now=101.0) == \
        "the run's deadline"


def test_the_summary_counts_the_checks_and_the_chaos_done(ledger, capsys):
    ledger.submit([it("a"), it("b")], "soak", "t")
    ok(ledger, "a")
    final = checks.check(ledger.path, ["a", "b"])
    tl = drive.Timeline(t0=1000.0, submitted=["a", "b"], end_at=1010.0, stuck=["b"],
                        ended_by="nothing ended for 60 s after the last chaos event")
    records = [{"kind": "scheduler", "at": 1001.0, "done_at": 1003.0, "killed_at": 1001.5,
                "recover_s": 1.5, "during_submit": True},
               {"kind": "node", "at": 1002.0, "done_at": 1002.1, "error": "ActorDiedError"}]
    out = {"timeline": tl, "final": final, "chaos": records, "kept_ledger": None,
           "planned": [chaos.Event(1, "scheduler", 0), chaos.Event(1, "node", 0)],
           "timing": {"last_end": 1005.0, "resume_s": [0.7], "iteration_p50_s": 0.1,
                      "iteration_max_s": 0.2},
           "leaked_domains": 0, "leaked_overlays": 0, "scheduler_stats": {}, "setup": {}}
    got = soak.report(soak.summarize(out, soak.SIM_QUICK, real=False, quick=True))
    assert (got["lost"], got["stuck"], got["double_committed"]) == (1, 1, 0)
    assert soak.failed(got)
    assert got["chaos_done"]["scheduler"] == 1 and got["chaos_done"]["node"] == 0
    assert got["chaos_planned"]["node"] == 1
    assert got["iterations_per_s"] == 0.4  # 2 submitted, 5 s from the start to the last end
    assert got["chaos"][0]["killed_at"] == 1.5 and got["scheduler_kills_during_submit"] == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "ActorDiedError" in printed
