import multiprocessing
import os
import signal

import pytest

from scheduler.ledger import Ledger, LedgerError
from scheduler.records import InvalidIteration, Iteration


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
    assert ledger.finish("a", second, "SUCCEEDED", {"exit_code": 0, "stdout": b"ok"})
    # the first attempt's result arrives late: ignored
    assert not ledger.finish("a", first, "FAILED", {"exit_code": 1})
    # and the second cannot commit twice
    assert not ledger.finish("a", second, "FAILED", {"exit_code": 1})
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
    assert ledger.finish("r", att, "CANCELLED", {})
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
