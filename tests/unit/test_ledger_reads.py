"""The ledger's read path: end_seq and ended_since, results of any number of ids, recorded
output by offset, listings without output, and the migration of databases made before end_seq."""

import shutil
import sqlite3

import pytest

from tryfleet.errors import BadRequest, TryfleetError
from tryfleet.scheduler import ledger_reads
from tryfleet.scheduler.core import Abandon, Finish, Launch, Requeue
from tryfleet.scheduler.ledger import IdReused, Ledger, SuiteBudgetExceeded
from tryfleet.scheduler.records import Iteration
from tryfleet.wire import State

from .builders import IDS_40000, end


def it(iid, **kw):
    return Iteration(image="base", command=("true",), id=iid, **kw)


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


def finish(ledger, ids, state="SUCCEEDED", stdout=b"", **outcome):
    """Start and end ids in one transaction each way: they end in this order."""
    end(ledger, ids, State(state), stdout=lambda iid: stdout, **outcome)


def end_seqs(ledger):
    return dict(ledger._db.execute("SELECT id, end_seq FROM iterations"))


def test_end_seq_counts_up_in_the_order_iterations_end_whatever_ends_them(ledger):
    ledger.submit([it(i) for i in "abcdef"], "s", "t")
    finish(ledger, ["c"])
    # queued a, b, d, e, f end now, in submission order
    ledger.commit([Finish(f"t/{i}", 0, State.CANCELLED, "x", queued=True) for i in "abdef"])
    assert end_seqs(ledger) == {"c": 1, "a": 2, "b": 3, "d": 4, "e": 5, "f": 6}
    ledger.submit([it("g")], "s2", "t")
    ledger.commit([Abandon("t/g", "cannot be placed")])
    assert end_seqs(ledger)["g"] == 7


def test_what_has_not_ended_has_no_end_seq_and_a_retry_does_not_end(ledger):
    ledger.submit([it("a")], "s", "t", infra_attempts=2)
    row = ledger.get_row("a")
    ledger.launch([Launch("t/a", 1, "h1", row)])
    assert ledger.commit([Requeue("t/a", 1, "boot", runs_left=1, infra_tries=1)]) == [True]
    assert end_seqs(ledger) == {"a": None}


def test_ended_since_pages_in_end_order_and_the_cursor_resumes(ledger):
    ledger.submit([it(f"i{n}") for n in range(5)], "s", "t")
    finish(ledger, ["i3", "i1", "i4"])
    page, cursor = ledger.ended_since(0, limit=2)
    assert [r.id for r in page] == ["i3", "i1"] and cursor == 2
    page, cursor = ledger.ended_since(cursor, limit=2)
    assert [r.id for r in page] == ["i4"] and cursor == 3
    assert ledger.ended_since(cursor) == ([], 3)
    finish(ledger, ["i0"])
    page, cursor = ledger.ended_since(cursor)
    assert [r.id for r in page] == ["i0"] and cursor == 4


def test_a_filtered_reader_skips_past_what_others_finished(ledger):
    ledger.submit([it("mine")], "s", "t")
    ledger.submit([it(f"o{n}") for n in range(3)], "other", "t")
    finish(ledger, ["o0", "o1", "o2"])
    assert ledger.ended_since(0, suite="s") == ([], 3)
    finish(ledger, ["mine"])
    page, cursor = ledger.ended_since(3, suite="s")
    assert [r.id for r in page] == ["mine"] and cursor == 4
    page, _ = ledger.ended_since(0, ids=["o2", "mine", "nosuch"])
    assert [r.id for r in page] == ["o2", "mine"]


def test_a_page_stops_once_it_holds_enough_output(ledger, monkeypatch):
    monkeypatch.setattr(ledger_reads, "PAGE_BYTES", 10)
    ledger.submit([it(f"i{n}") for n in range(3)], "s", "t")
    finish(ledger, ["i0", "i1", "i2"], stdout=b"12345678")
    page, cursor = ledger.ended_since(0)
    assert [r.id for r in page] == ["i0", "i1"] and cursor == 2


def test_results_and_ended_since_take_more_ids_than_sqlite_has_parameters(tmp_path,
                                                                          queued_40000):
    shutil.copy(queued_40000, tmp_path / "big.db")
    ledger = Ledger(tmp_path / "big.db")
    ids, n = IDS_40000, len(IDS_40000)  # SQLite allows 32,766 parameters in one statement
    finish(ledger, ids[::2])
    wanted = [*ids, "nosuch"]
    assert len(ledger.results(ids=wanted)) == n
    assert [r.id for r in ledger.results(ids=wanted, states=["SUCCEEDED"])] == ids[::2]
    page, cursor = ledger.ended_since(0, ids=wanted, limit=n)
    assert len(page) == n // 2 and cursor == n // 2
    assert len(ledger.results(ids=ids[:3])) == 3  # and the temp table is left empty
    assert ledger._db.execute("SELECT COUNT(*) FROM temp.wanted").fetchone()[0] == 0


def test_listings_leave_the_output_out(ledger):
    ledger.submit([it("a")], "s", "t")
    finish(ledger, ["a"], stdout=b"big output")
    (row,) = ledger.results(output=False)
    assert (row.id, row.state, row.stdout, row.stderr) == ("a", "SUCCEEDED", "", "")
    assert ledger.results()[0].stdout == "big output"


def test_recorded_output_by_offset_byte_for_byte(ledger):
    ledger.submit([it("a"), it("q")], "s", "t")
    out = b"\xff\x00binary\n" + "é".encode()
    finish(ledger, ["a"], stdout=out, stderr=b"err")
    assert ledger.output("a") == (out, b"err")
    assert ledger.output("a", 3, 1) == (out[3:], b"rr")
    assert ledger.output("a", 10_000, 10_000) == (b"", b"")
    assert ledger.output("q") == (b"", b"")  # queued: nothing recorded yet
    assert ledger.output("nosuch") is None


OLD_SCHEMA = """
CREATE TABLE iterations (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, tenant TEXT NOT NULL, suite TEXT NOT NULL,
    trace_id TEXT NOT NULL, priority INTEGER NOT NULL, spec BLOB NOT NULL, limits TEXT NOT NULL,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    runs_left INTEGER NOT NULL, host TEXT, submitted_at REAL NOT NULL, started_at REAL,
    ended_at REAL, duration_s REAL, exit_code INTEGER, signal INTEGER, stdout BLOB,
    stderr BLOB, stdout_truncated INTEGER NOT NULL DEFAULT 0,
    stderr_truncated INTEGER NOT NULL DEFAULT 0, error TEXT, result_attempt INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
"""


def test_a_database_made_before_end_seq_is_migrated_in_the_order_things_ended(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    for n, (iid, state, ended_at) in enumerate([("late", "SUCCEEDED", 20.0),
                                                ("early", "FAILED", 10.0),
                                                ("running", "RUNNING", None)]):
        db.execute("INSERT INTO iterations (id, seq, tenant, suite, trace_id, priority, spec, "
                   "limits, state, max_attempts, runs_left, submitted_at, ended_at) VALUES "
                   "(?, ?, 't', 's', 'x', 0, x'80', '', ?, 3, 1, 0, ?)", (iid, n, state, ended_at))
    db.commit()
    db.close()
    led = Ledger(path)
    assert end_seqs(led) == {"early": 1, "late": 2, "running": None}
    indexes = {r[0] for r in led._db.execute("SELECT name FROM sqlite_master WHERE "
                                             "type = 'index'")}
    assert {"iterations_end_seq", "iterations_tenant_suite_end_seq"} <= indexes
    led.close()
    assert end_seqs(Ledger(path)) == {"early": 1, "late": 2, "running": None}  # once only


def test_refused_writes_are_bad_requests(ledger):
    ledger.ensure_suite("s", "t", max_iterations=1)
    ledger.submit([it("a")], "s", "t")
    with pytest.raises(IdReused) as reused:
        ledger.submit([Iteration(image="base", command=("false",), id="a")], "s", "t")
    with pytest.raises(SuiteBudgetExceeded) as spent:
        ledger.submit([it("b")], "s", "t")
    for err in (reused.value, spent.value):
        assert isinstance(err, BadRequest) and isinstance(err, TryfleetError)


def test_files_are_kept_as_given_text_or_bytes(ledger):
    data = b"\x00\xff\xfe binary"
    ledger.submit([Iteration("base", ("true",), files={"/b": data, "/t": "text"}, id="f")],
                  "s", "t")
    assert dict(ledger.get_row("f").iteration.files) == {"/b": data, "/t": "text"}
    ledger.submit([Iteration("base", ("true",), files={"/b": data, "/t": "text"}, id="f")],
                  "s", "t")  # the same again: the same spec, nothing refused
