"""The audit trail's chain: records and their canonical form, appends from threads, tasks and
processes into one contiguous chain, a database that refuses UPDATE and DELETE, signed
checkpoints, env values never stored, and appends that fail closed."""

import asyncio
import contextlib
import json
import os
import pathlib
import sqlite3
import subprocess
import sys
import threading

import pytest

from tryfleet.audit import (
    GENESIS,
    Audit,
    AuditPaths,
    AuditUnavailable,
    Checkpoint,
    Digest,
    Entry,
    Filter,
    canonical_json,
    command_details,
    command_result,
    env_names,
    file_details,
    verify,
)
from tryfleet.audit.checkpoints import load_public_key, read_lines
from tryfleet.audit.record import chain_hash
from tryfleet.errors import BadRequest, InfrastructureError, TryfleetError

ROOT = pathlib.Path(__file__).parents[2]


def note(audit, n=1, action="exec.start", **kw):
    """Record n records; their seqs."""
    fields = {"tenant": "acme", "actor": "key:k1", "request_id": "req_1", **kw}
    return [audit.record(action, **fields, details={"n": i}) for i in range(n)]


def rows(data_dir):
    db = sqlite3.connect(AuditPaths.of(data_dir).db)
    try:
        return db.execute("SELECT seq, prev_hash, hash FROM records ORDER BY seq").fetchall()
    finally:
        db.close()


def checkpoint_lines(data_dir):
    return [Checkpoint.parse(line) for _, line in read_lines(AuditPaths.of(data_dir).checkpoints)]


@pytest.fixture
def audit(tmp_path):
    a = Audit(tmp_path)
    yield a
    a.close()


# ---- the record ------------------------------------------------------------------------------
def test_the_canonical_content_is_json_with_sorted_keys_and_no_spaces():
    e = Entry.of("exec.start", tenant="acme", actor="key:k1", request_id="req_1",
                 details={"b": [1, "é"], "a": None})
    got = e.content(7, 1767225600.25)
    want = json.dumps({"action": "exec.start", "actor": "key:k1", "at": 1767225600.25,
                       "details": {"a": None, "b": [1, "é"]}, "host": "", "iteration": "",
                       "outcome": "", "request_id": "req_1", "sandbox": "", "seq": 7,
                       "suite": "", "tenant": "acme", "trace_id": ""},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert got == want.encode("utf-8")


def test_a_hash_covers_the_previous_hash_and_the_content(audit, tmp_path):
    note(audit, 2)
    (s1, p1, h1), (s2, p2, h2) = rows(tmp_path)
    r1, r2 = audit.trace("req_1")
    assert (s1, s2, p1, p2) == (1, 2, GENESIS, h1)
    assert h1 == chain_hash(GENESIS, r1.content()) and h2 == chain_hash(h1, r2.content())


def test_details_that_are_not_utf8_stay_valid_json_and_decode_to_the_same_text():
    bad = "caf\udce9"  # a path that was not UTF-8, as os.fsdecode gives it
    text = canonical_json({"path": bad})
    text.encode("utf-8")
    assert json.loads(text) == {"path": bad}


def test_an_action_must_be_a_dotted_lowercase_name():
    for bad in ("exec", "Exec.start", "exec start", "exec..start", ""):
        with pytest.raises(BadRequest, match="dotted"):
            Entry.of(bad, tenant="", actor="", request_id="")


# ---- appending -------------------------------------------------------------------------------
def test_seqs_are_contiguous_from_one_and_returned_when_durable(audit, tmp_path):
    assert note(audit, 3) == [1, 2, 3]
    assert [s for s, _, _ in rows(tmp_path)] == [1, 2, 3]


def test_threads_and_tasks_appending_at_once_make_one_chain(audit, tmp_path):
    got: list[int] = []

    def many():
        got.extend(note(audit, 50))

    async def tasks():
        return await asyncio.gather(*(audit.arecord(
            "api.request", tenant="acme", actor="key:k1", request_id=f"r{i}")
            for i in range(50)))

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    got.extend(asyncio.run(tasks()))
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 251))
    assert verify(tmp_path).problems == ()


CHILD = """
import sys
from tryfleet.audit import Audit
audit = Audit(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    audit.record("exec.start", tenant="bolt", actor="scheduler", request_id="child")
audit.close()
"""


def test_two_processes_appending_at_once_make_one_contiguous_chain(audit, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), "300"], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    child.stdin.write("go\n")
    child.stdin.flush()
    mine = note(audit, 300)
    assert child.wait(timeout=60) == 0
    audit.close()
    chain = rows(tmp_path)
    assert [s for s, _, _ in chain] == list(range(1, 601))
    assert all(p == chain[i - 1][2] for i, (_, p, _) in enumerate(chain) if i)
    assert mine == sorted(mine)
    report = verify(tmp_path)
    assert report.ok, report.problems
    actors = {r.actor for r in audit.export()}
    assert actors == {"key:k1", "scheduler"}


def test_the_database_refuses_update_and_delete(audit, tmp_path):
    note(audit, 2)
    db = sqlite3.connect(AuditPaths.of(tmp_path).db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE refused"):
        db.execute("UPDATE records SET outcome = 'ok' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only: DELETE refused"):
        db.execute("DELETE FROM records WHERE seq = 2")
    db.close()
    assert len(rows(tmp_path)) == 2


def test_the_database_refuses_an_insert_that_is_not_at_the_head(audit, tmp_path):
    note(audit, 2)
    db = sqlite3.connect(AuditPaths.of(tmp_path).db)
    with pytest.raises(sqlite3.DatabaseError, match="appended at the head only"):
        db.execute("INSERT INTO records VALUES (5, 0, '', '', '', '', 'x.y', '', '', '', '', "
                   "'', '{}', ?, ?)", (rows(tmp_path)[-1][2], "0" * 64))
    db.close()


def test_the_trail_file_is_readable_by_its_owner_only(audit, tmp_path):
    note(audit)
    audit.close()
    paths = AuditPaths.of(tmp_path)
    for p in (paths.db, paths.key, paths.checkpoints):
        assert p.stat().st_mode & 0o077 == 0, p


# ---- checkpoints -----------------------------------------------------------------------------
def test_the_head_is_signed_at_close(tmp_path):
    audit = Audit(tmp_path, checkpoint_every=10**6, checkpoint_s=3600)
    note(audit, 3)
    audit.close()
    (cp,) = checkpoint_lines(tmp_path)
    assert (cp.seq, cp.hash) == (3, rows(tmp_path)[-1][2])
    assert cp.valid(load_public_key(AuditPaths.of(tmp_path).pub))


def test_a_checkpoint_every_n_records(tmp_path):
    audit = Audit(tmp_path, checkpoint_every=5, checkpoint_s=3600)
    note(audit, 12)  # one at a time: each its own batch
    audit.close()
    assert [cp.seq for cp in checkpoint_lines(tmp_path)] == [5, 10, 12]


def test_a_checkpoint_t_seconds_after_a_record(tmp_path):
    from tests.waiting import until

    audit = Audit(tmp_path, checkpoint_every=10**6, checkpoint_s=0.05)
    try:
        note(audit, 2)
        until(lambda: [cp.seq for cp in checkpoint_lines(tmp_path)] == [2], 5)
    finally:
        audit.close()
    assert [cp.seq for cp in checkpoint_lines(tmp_path)] == [2]  # nothing new to sign


def test_a_trail_closed_without_records_signs_nothing(tmp_path):
    Audit(tmp_path).close()
    assert checkpoint_lines(tmp_path) == []


# ---- what command and file records hold ------------------------------------------------------
def test_env_values_are_never_stored(audit, tmp_path):
    secret = "hunter2-value"
    for env in ({"TOKEN": secret, "HOME": "/root"}, [f"TOKEN={secret}", "HOME=/root"]):
        audit.record("exec.start", tenant="acme", actor="key:k1", request_id="r",
                     details=command_details(["env"], cwd="/root", user="root", env=env))
    audit.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in stored
    got = [r.to_json()["details"] for r in audit.trace("r")]
    assert [d["env_names"] for d in got] == [["HOME", "TOKEN"], ["HOME", "TOKEN"]]


def test_env_names_keeps_only_names_whatever_it_is_given():
    assert env_names({"B": "1", "A": "2"}) == ["A", "B"]
    assert env_names(["B=x=y", "A"]) == ["A", "B"]


def test_a_command_result_has_exit_code_duration_byte_counts_and_digests():
    got = command_result(exit_code=0, duration_s=0.25, stdout=Digest.of(b"hi\n"))
    assert got == {"exit_code": 0, "signal": None, "duration_s": 0.25, "stdout_bytes": 3,
                   "stdout_sha256": Digest.of(b"hi\n").sha256, "stderr_bytes": 0,
                   "stderr_sha256": Digest.of(b"").sha256, "timed_out": False}


def test_a_long_argument_is_recorded_cut_with_its_length_and_hash():
    (arg,) = command_details(["x" * 10_000])["argv"]
    assert len(arg) < 4200 and "[10000 chars, sha256 " in arg


def test_file_details_are_path_size_and_sha256():
    assert file_details("/root/a", b"abc") == {
        "path": "/root/a", "size_bytes": 3, "sha256": Digest.of(b"abc").sha256}


# ---- failing closed --------------------------------------------------------------------------
def test_the_error_is_an_infrastructure_error():
    assert issubclass(AuditUnavailable, InfrastructureError)
    assert issubclass(AuditUnavailable, TryfleetError)


def test_a_vanished_database_refuses_appends_and_is_not_made_anew(audit, tmp_path):
    note(audit)
    db = AuditPaths.of(tmp_path).db
    for p in tmp_path.glob("audit.db*"):
        p.unlink()
    with pytest.raises(AuditUnavailable, match="is gone"):
        note(audit)
    assert not db.exists()


@contextlib.contextmanager
def immutable(*paths):
    """chattr +i: refused writes even to root, even through open files (ext4 and the like)."""
    done = []
    try:
        for p in paths:
            if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode:
                pytest.skip("chattr +i does not work on this filesystem")
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=True)


def test_a_read_only_database_refuses_appends(tmp_path):
    first = Audit(tmp_path)
    note(first)
    first.close()
    with immutable(AuditPaths.of(tmp_path).db):
        audit = Audit(tmp_path)
        try:
            with pytest.raises(AuditUnavailable, match=r"cannot be written.*readonly"):
                note(audit)
        finally:
            audit.close()
    assert len(rows(tmp_path)) == 1


def test_a_database_that_turns_read_only_while_in_use_refuses_appends(audit, tmp_path):
    note(audit)
    db = AuditPaths.of(tmp_path).db  # not the -shm: SQLite maps it, and would crash
    with immutable(db, db.with_name("audit.db-wal")), pytest.raises(AuditUnavailable):
        note(audit)
    assert note(audit) == [2]  # writable again: the chain goes on, nothing half-written
    assert verify(tmp_path).problems == ()


def test_a_closed_trail_refuses_appends(audit):
    audit.close()
    with pytest.raises(AuditUnavailable, match="closed"):
        note(audit)


def test_times_never_go_back_with_seq_even_when_the_clock_does(tmp_path):
    from tryfleet.audit import store

    db = store.open_write(AuditPaths.of(tmp_path).db, True, 5.0)
    e = Entry.of("exec.start", tenant="acme", actor="key:k1", request_id="r")
    (first,) = store.append(db, [e], 5.0, clock=lambda: 2000.0)
    (second,) = store.append(db, [e], 5.0, clock=lambda: 1000.0)  # stepped back
    db.close()
    assert (first.at, second.at) == (2000.0, 2000.0)


def test_a_caller_that_gives_up_leaves_the_writer_working(audit, tmp_path):
    async def give_up_then_record():
        async with asyncio.timeout(10):  # a writer thread that died: every record waits
            await twenty()

    async def twenty():
        for i in range(20):
            task = asyncio.ensure_future(audit.arecord(
                "api.request", tenant="acme", actor="key:k1", request_id=f"gone{i}"))
            await asyncio.sleep(0)  # submitted: its record may or may not be written
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await audit.arecord("api.request", tenant="acme", actor="key:k1",
                                request_id="kept")

    asyncio.run(give_up_then_record())
    assert len(audit.trace("kept")) == 20
    audit.close()
    assert verify(tmp_path).ok


# ---- the package -----------------------------------------------------------------------------
def test_the_public_api_is_pinned():
    import tryfleet.audit

    assert set(tryfleet.audit.__all__) == {
        "GENESIS", "Audit", "AuditPaths", "AuditUnavailable", "Checkpoint", "Digest",
        "Digester", "Entry", "Filter", "Problem", "Record", "Report", "canonical_json",
        "command_details", "command_outcome", "command_result", "env_names", "export",
        "file_details", "parse_since", "select", "trace", "verify"}
    assert all(hasattr(tryfleet.audit, name) for name in tryfleet.audit.__all__)


def test_the_audit_imports_nothing_of_the_fleet():
    from tests.unit.builders import imported_names

    banned = ("ray", "libvirt", "tryfleet.gateway", "tryfleet.scheduler", "tryfleet.nodeagent",
              "tryfleet.images", "fastapi")
    for path in (ROOT / "audit").glob("*.py"):
        found = imported_names(path, "tryfleet.audit")
        assert not {n for n in found for b in banned if n == b or n.startswith(b + ".")}, path


def test_records_appended_together_are_in_order_in_one_transaction(audit, tmp_path):
    entries = [Entry.of("api.request", tenant="acme", actor="key:k1", request_id="r"),
               Entry.of("exec.start", tenant="acme", actor="key:k1", request_id="r")]
    assert audit.record_many(entries) == [1, 2]
    assert asyncio.run(audit.arecord_many(entries)) == [3, 4]
    assert audit.record_many([]) == []
    got = audit.trace("r")
    assert [r.action for r in got] == ["api.request", "exec.start"] * 2
    assert got[0].at == got[1].at and got[2].at == got[3].at  # one commit each


def test_more_records_together_than_one_insert_holds(audit, tmp_path):
    from tryfleet.audit.store import ROWS_PER_INSERT

    n = 2 * ROWS_PER_INSERT + 3
    entries = [Entry.of("iteration.state", tenant="acme", actor="scheduler", request_id="r",
                        iteration=f"it-{i}") for i in range(n)]
    assert audit.record_many(entries) == list(range(1, n + 1))
    audit.close()
    assert verify(tmp_path).ok


def test_a_trail_locked_past_the_busy_timeout_refuses_appends(tmp_path):
    audit = Audit(tmp_path, busy_timeout_s=0.1)
    holder = sqlite3.connect(AuditPaths.of(tmp_path).db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
        with pytest.raises(AuditUnavailable, match="database is locked"):
            note(audit)
        holder.execute("ROLLBACK")
        assert note(audit) == [1]
    finally:
        holder.close()
        audit.close()


def test_a_record_not_on_disk_within_the_wait_is_refused(tmp_path):
    audit = Audit(tmp_path, busy_timeout_s=5.0, wait_s=0.1)
    holder = sqlite3.connect(AuditPaths.of(tmp_path).db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(AuditUnavailable, match=r"did not answer within 0\.1 s"):
            note(audit)
        with pytest.raises(AuditUnavailable, match=r"did not answer within 0\.1 s"):
            asyncio.run(audit.arecord("api.request", tenant="", actor="", request_id=""))
        holder.execute("ROLLBACK")
    finally:
        holder.close()
        audit.close()


def test_queued_records_go_to_disk_with_the_next_ones_waited_for_before_them(tmp_path):
    audit = Audit(tmp_path, queued_hold_s=60)
    audit.record_queued([Entry.of("api.response", tenant="acme", actor="key:k1",
                                  request_id="r1")])
    assert note(audit, request_id="r2") == [2]
    got = audit.select(Filter())
    audit.close()
    assert [(r.seq, r.action) for r in got] == [(1, "api.response"), (2, "exec.start")]
    assert got[0].at == got[1].at  # one commit


def test_queued_records_alone_are_on_disk_once_flushed(tmp_path):
    audit = Audit(tmp_path, queued_hold_s=60)
    audit.record_queued([Entry.of("api.response", tenant="acme", actor="key:k1",
                                  request_id="r1")])
    asyncio.run(audit.flushed())
    assert [r.action for r in audit.trace("r1")] == ["api.response"]
    asyncio.run(audit.flushed())  # nothing waiting: answered at once
    audit.close()


def test_queued_records_are_on_disk_at_close(tmp_path):
    audit = Audit(tmp_path, queued_hold_s=60)
    audit.record_queued([Entry.of("api.response", tenant="acme", actor="key:k1",
                                  request_id="r1")])
    audit.close()
    assert [seq for seq, _, _ in rows(tmp_path)] == [1]
