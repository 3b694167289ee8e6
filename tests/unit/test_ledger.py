import multiprocessing
import os
import signal

import pytest

from tryfleet.scheduler.ledger import Ledger, LedgerError, Report
from tryfleet.scheduler.records import InvalidIteration, Iteration
from tryfleet.wire import Failure, Outcome, State


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


def test_result_is_committed_once_and_stale_attempts_are_ignored(ledger):
    ledger.submit([it(id="a")], "s", "t")
    first = ledger.place("a", "h1")
    assert ledger.running("a", first)
    assert ledger.retry("a", first, "host lost")
    second = ledger.place("a", "h2")
    assert second == first + 1
    ok = Outcome("a", second, State.SUCCEEDED, "h2", exit_code=0, stdout=b"ok")
    assert ledger.finish("a", second, "SUCCEEDED", ok)
    # the first attempt's result arrives late: ignored
    late = Outcome("a", first, State.FAILED, "h1", exit_code=1)
    assert not ledger.finish("a", first, "FAILED", late)
    # and the second cannot commit twice
    assert not ledger.finish("a", second, "FAILED", late)
    r = ledger.result("a")
    assert (r.state, r.exit_code, r.stdout, r.attempts, r.host) == ("SUCCEEDED", 0, "ok", 2, "h2")


def test_infra_retries_are_bounded(ledger):
    ledger.submit([it(id="a")], "s", "t", infra_attempts=2)
    a1 = ledger.place("a", "h1")
    assert ledger.retry("a", a1, "boot failed")
    a2 = ledger.place("a", "h2")
    assert not ledger.retry("a", a2, "boot failed again")


def test_user_failures_retry_only_when_asked(ledger):
    ledger.submit([it(id="never"), it(id="twice", retries=1)], "s", "t")
    a = ledger.place("never", "h")
    assert not ledger.retry("never", a, "exit 1", user_failure=True)
    b = ledger.place("twice", "h")
    assert ledger.retry("twice", b, "exit 1", user_failure=True)
    b2 = ledger.place("twice", "h")
    assert not ledger.retry("twice", b2, "exit 1", user_failure=True)


def test_cancel_queued_now_and_flag_in_flight(ledger):
    ledger.submit([it(id="q"), it(id="r")], "s", "t")
    ledger.submit([it(id="other")], "s2", "t")
    att = ledger.place("r", "h1")
    assert ledger.cancel(suite="s") == [("r", att, "h1")]
    assert ledger.result("q").state == "CANCELLED"
    assert ledger.place("q", "h1") is None
    assert ledger.get_row("r").cancel_requested
    assert not ledger.retry("r", att, "x")  # a cancelled iteration is not retried
    assert ledger.finish("r", att, "CANCELLED")
    assert ledger.result("other").state == "QUEUED"


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


# ---- batches: one transaction for many iterations, each still fenced by its attempt ----------

def _rep(iid, attempt, state, failure=None, **fields):
    state = State(state)
    if state is State.INFRA_ERROR and failure is None:
        failure = Failure.INFRA
    return Report(iid, attempt, Outcome(iid, attempt, state, "h1", failure=failure,
                                        exit_code=0 if state is State.SUCCEEDED else 1,
                                        **fields))


def test_submit_rows_returns_new_rows_and_known_ones_as_they_stand(ledger):
    first = ledger.submit_rows([it(id="a", priority=2)], "s", "t")
    assert [(r.id, r.state, r.attempt, r.priority) for r in first] == [("a", "QUEUED", 0, 2)]
    assert first[0] == ledger.get_row("a")  # what the scheduler holds is what is on disk
    ledger.place("a", "h1")
    again = ledger.submit_rows([it(id="a", priority=2), it(id="b")], "s", "t")
    assert [(r.id, r.state) for r in again] == [("a", "PLACED"), ("b", "QUEUED")]
    assert again[1].seq == first[0].seq + 1


def test_place_many_is_one_commit_and_skips_what_is_no_longer_queued(ledger):
    ledger.submit([it(id="a"), it(id="b"), it(id="c")], "s", "t")
    ledger.cancel(iid="b")
    before = ledger.commits
    assert ledger.place_many([("a", "h1"), ("b", "h1"), ("c", "h2")]) == [1, None, 1]
    assert ledger.commits == before + 1
    assert ledger.running_many([("a", 1), ("c", 2)]) == [True, False]  # c's attempt is 1
    assert [ledger.get_row(i).state for i in "abc"] == ["RUNNING", "CANCELLED", "PLACED"]
    assert [a["host"] for a in ledger.attempts("c")] == ["h2"]


def test_settle_a_batch_in_one_commit_each_report_fenced_by_attempt(ledger):
    ledger.submit([it(id="ok"), it(id="stale"), it(id="infra"), it(id="fail", retries=1),
                   it(id="bad"), it(id="cx")], "s", "t")
    names = ["ok", "stale", "infra", "fail", "bad", "cx"]
    first = dict(zip(names, ledger.place_many([(i, "h1") for i in names]), strict=True))
    # "stale" was requeued (host lost) and placed again before its first attempt reported
    assert ledger.retry("stale", first["stale"], "host lost")
    (second,) = ledger.place_many([("stale", "h2")])
    ledger.cancel(iid="cx")
    before = ledger.commits
    got = ledger.settle([
        _rep("ok", first["ok"], "SUCCEEDED", stdout=b"done"),
        _rep("stale", first["stale"], "FAILED"),  # the old attempt: ignored
        _rep("infra", first["infra"], "INFRA_ERROR", error="boot failed"),
        _rep("fail", first["fail"], "FAILED"),
        _rep("bad", first["bad"], "INFRA_ERROR", Failure.BAD_REQUEST, error="no such image"),
        _rep("cx", first["cx"], "FAILED"),
    ])
    assert ledger.commits == before + 1
    assert got == ["SUCCEEDED", None, "QUEUED", "QUEUED", "INFRA_ERROR", "CANCELLED"]
    assert ledger.result("ok").stdout == "done"
    assert ledger.get_row("stale").state == "PLACED" and ledger.get_row("stale").attempt == second
    assert [a["outcome"] for a in ledger.attempts("infra")] == ["RETRIED"]
    assert ledger.get_row("fail").runs_left == 1
    assert ledger.result("bad").error == "no such image"
    # the same report again (a host that resent it): nothing changes
    assert ledger.settle([_rep("ok", first["ok"], "FAILED")]) == [None]
    assert ledger.result("ok").state == "SUCCEEDED"


def test_settle_respects_the_retry_budgets(ledger):
    ledger.submit([it(id="a")], "s", "t", infra_attempts=2)
    (a1,) = ledger.place_many([("a", "h1")])
    assert ledger.settle([_rep("a", a1, "INFRA_ERROR", error="x")]) == ["QUEUED"]
    (a2,) = ledger.place_many([("a", "h2")])
    assert ledger.settle([_rep("a", a2, "INFRA_ERROR", error="y")]) == ["INFRA_ERROR"]
    assert ledger.result("a").error == "y"


def test_an_attempt_its_host_does_not_know_is_tried_again(ledger):
    ledger.submit([it(id="a")], "s", "t")
    (a1,) = ledger.place_many([("a", "h1")])
    lost = Report.lost("a", a1, "h1", "attempt 1 of a is unknown on h1", Failure.LOST)
    assert (lost.state, lost.retry_infra) == ("INFRA_ERROR", True)
    assert ledger.settle([lost]) == ["QUEUED"]
    assert ledger.attempts("a")[0]["error"] == "attempt 1 of a is unknown on h1"
