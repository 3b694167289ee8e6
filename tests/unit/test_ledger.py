import multiprocessing
import os
import signal

import pytest

from tryfleet.scheduler.core import Abandon, Finish, Launch, MarkCancelled, Requeue
from tryfleet.scheduler.ledger import Ledger, LedgerError
from tryfleet.scheduler.records import InvalidIteration, Iteration
from tryfleet.wire import Outcome, State


def it(**kw):
    return Iteration(image="base", command=("true",), **kw)


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


def test_submit_is_durable_and_queued(ledger, tmp_path):
    ids = ledger.submit([it(id="a"), it(id="b")], suite="s", tenant="t")
    assert ids == ["a", "b"]
    again = Ledger(tmp_path / "ledger.db")
    assert [r.id for r in again.queued()] == ["a", "b"]
    assert again.get_row("a").trace_id and again.get_row("a").suite == "s"


def test_wal_mode(ledger):
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_resubmitting_the_same_id_is_idempotent_but_a_different_spec_is_refused(ledger):
    ledger.submit([it(id="a")], "s", "t")
    ledger.submit([it(id="a")], "s", "t")
    assert ledger.counts() == {"QUEUED": 1}
    with pytest.raises(LedgerError, match="already submitted"):
        ledger.submit([Iteration(image="base", command=("false",), id="a")], "s", "t")


def test_a_bad_batch_loses_nothing_and_adds_nothing(ledger):
    ledger.submit([it(id="a")], "s", "t")
    with pytest.raises(LedgerError):
        ledger.submit([it(id="b"), Iteration(image="base", command=("x",), id="a")], "s", "t")
    assert [r.id for r in ledger.queued()] == ["a"]


def _launch(ledger, iid, host="h1"):
    """Start the next attempt of iid on host, as the scheduler's core would."""
    row = ledger.get_row(iid)
    (ok,) = ledger.launch([Launch(row.key, row.attempt + 1, host, row)])
    assert ok
    return row.attempt + 1


def _out(iid, attempt, state, **kw):
    return Outcome(iid, attempt, state, "h1", exit_code=0 if state is State.SUCCEEDED else 1,
                   **kw)


def test_a_result_is_committed_once_and_a_stale_attempt_changes_nothing(ledger):
    ledger.submit([it(id="a")], "s", "t")
    first = _launch(ledger, "a")
    assert ledger.commit([Requeue("t/a", first, "host lost", runs_left=1, infra_tries=1)])
    second = _launch(ledger, "a", "h2")
    assert second == first + 1
    win = Finish("t/a", second, State.SUCCEEDED, outcome=_out("a", second, State.SUCCEEDED,
                                                              stdout=b"ok"))
    late = Finish("t/a", first, State.FAILED, outcome=_out("a", first, State.FAILED))
    assert ledger.commit([win, late, win]) == [True, False, False]
    r = ledger.result("a")
    assert (r.state, r.exit_code, r.stdout, r.attempts, r.host) == ("SUCCEEDED", 0, "ok", 2, "h2")
    assert [(a["attempt"], a["outcome"]) for a in ledger.attempts("a")] == [
        (1, "RETRIED"), (2, "SUCCEEDED")]


def test_a_requeue_keeps_the_budget_the_core_decided(ledger):
    ledger.submit([it(id="a", retries=2)], "s", "t")
    first = _launch(ledger, "a")
    ledger.commit([Requeue("t/a", first, "boot failed", runs_left=3, infra_tries=1)])
    row = ledger.get_row("a")
    assert (row.state, row.attempt, row.runs_left, row.infra_tries) == ("QUEUED", 1, 3, 1)


def test_a_launch_is_fenced_by_the_attempt_before_it(ledger):
    ledger.submit([it(id="a")], "s", "t")
    row = ledger.get_row("a")
    assert ledger.launch([Launch("t/a", 2, "h1", row)]) == [False]  # attempt 1 never happened
    assert ledger.launch([Launch("t/a", 1, "h1", row)]) == [True]
    assert ledger.launch([Launch("t/a", 1, "h1", row)]) == [False]  # already running


def test_a_queued_iteration_is_cancelled_and_a_running_one_only_flagged(ledger):
    ledger.submit([it(id="q"), it(id="r")], "s", "t")
    att = _launch(ledger, "r")
    assert ledger.commit([Finish("t/q", 0, State.CANCELLED, "cancelled", queued=True),
                          MarkCancelled(("t/r",), "cancelled")]) == [True, True]
    assert ledger.result("q").state == "CANCELLED" and ledger.attempts("q") == []
    row = ledger.get_row("r")
    assert (row.state, row.cancel_requested) == ("RUNNING", True)
    assert ledger.commit([Finish("t/r", att, State.CANCELLED, "cancelled")]) == [True]
    assert ledger.result("r").state == "CANCELLED"


def test_abandon_ends_a_queued_iteration_without_an_attempt(ledger):
    ledger.submit([it(id="a")], "s", "t")
    assert ledger.commit([Abandon("t/a", "cannot be placed: no host has 64 cpus")]) == [True]
    r = ledger.result("a")
    assert (r.state, r.error, r.attempts) == ("INFRA_ERROR",
                                              "cannot be placed: no host has 64 cpus", 0)


def test_recover_gives_every_unended_row_and_the_wall_budgets(ledger):
    ledger.ensure_suite("s", "t", max_wall_s=60)
    ledger.submit([it(id="a"), it(id="b"), it(id="c")], "s", "t")
    _launch(ledger, "b")
    ledger.commit([Abandon("t/c", "no")])
    rows, budgets = ledger.recover()
    assert [(r.id, r.state) for r in rows] == [("a", "QUEUED"), ("b", "RUNNING")]
    assert [(name, wall) for name, _, wall in budgets] == [("t/s", 60)]  # suite keys


def test_an_older_ledger_gains_the_infra_tries_column(tmp_path):
    import sqlite3

    from .test_ledger_reads import OLD_SCHEMA

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.close()
    led = Ledger(path)
    led.submit([it(id="a")], "s", "t")
    assert led.get_row("a").infra_tries == 0


def test_suite_budget_of_iterations(ledger):
    ledger.ensure_suite("s", "t", max_iterations=2)
    ledger.submit([it(id="a"), it(id="b")], "s", "t")
    with pytest.raises(LedgerError, match="allows 2"):
        ledger.submit([it(id="c")], "s", "t")


def _submit_then_die(path):
    led = Ledger(path)
    led.submit([Iteration(image="base", command=("true",), id=f"i{n}") for n in range(50)],
               "s", "t")
    os.kill(os.getpid(), signal.SIGKILL)


def test_survives_kill_9_right_after_submit(tmp_path):
    path = tmp_path / "ledger.db"
    proc = multiprocessing.get_context("spawn").Process(target=_submit_then_die, args=(path,))
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert Ledger(path).counts() == {"QUEUED": 50}


@pytest.mark.parametrize("kw, message", [
    ({"command": ()}, "command"),
    ({"image": "no spaces"}, "image"),
    ({"cpus": 0}, "cpus"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"files": {"rel": "x"}}, "absolute"),
    ({"limits": ("bad name",)}, "limit"),
])
def test_invalid_iterations_say_which_field(kw, message):
    args = {"image": "base", "command": ("true",), **kw}
    with pytest.raises(InvalidIteration, match=message):
        Iteration(**args)
