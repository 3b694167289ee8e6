"""The audit trail's SQLite file: its schema, its connections, and appending at the head.

One table, `records`, STRICT, seq contiguous from 1, `at` never decreasing with seq. Indexes
serve a trace (request id), a tenant's view, a sandbox's and an iteration's records; each one
more is another page written at every commit, so none for the rest. Triggers refuse UPDATE
and DELETE, and an INSERT anywhere but at the head (seq = last + 1, prev_hash = the last
hash): the database itself keeps the trail append-only for every writer; dropping the
triggers (as an attacker could) is what `verify` is for.

Appends from several processes are safe: each batch is one BEGIN IMMEDIATE transaction that
reads the head (seq, hash) and inserts after it. WAL with synchronous=FULL: a record is on disk
when its transaction returns.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from .errors import AuditUnavailable
from .record import FIELDS, GENESIS, Entry, Record, chain_hash

FORMAT = 1  # PRAGMA user_version of the file
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    tenant TEXT NOT NULL,
    actor TEXT NOT NULL,
    request_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    action TEXT NOT NULL,
    sandbox TEXT NOT NULL,
    iteration TEXT NOT NULL,
    suite TEXT NOT NULL,
    host TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS records_request ON records(request_id, seq);
CREATE INDEX IF NOT EXISTS records_tenant ON records(tenant, seq);
CREATE INDEX IF NOT EXISTS records_sandbox ON records(sandbox, seq);
CREATE INDEX IF NOT EXISTS records_iteration ON records(iteration, seq);
CREATE TRIGGER IF NOT EXISTS records_no_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS records_no_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS records_at_head BEFORE INSERT ON records
WHEN NEW.seq IS NOT (SELECT IFNULL(MAX(seq), 0) + 1 FROM records)
  OR NEW.prev_hash IS NOT IFNULL((SELECT hash FROM records ORDER BY seq DESC LIMIT 1),
                                 '{GENESIS}')
BEGIN SELECT RAISE(ABORT, 'audit records are appended at the head only'); END;
PRAGMA user_version = {FORMAT};
"""
COLUMNS = ", ".join(FIELDS)
_ROW = f"({', '.join('?' * len(FIELDS))})"
ROWS_PER_INSERT = 256  # 15 values a row: well within SQLite's 32,766 per statement
_HEAD = "SELECT seq, hash, at FROM records ORDER BY seq DESC LIMIT 1"
BUSY_RETRY_FIRST_S = 0.00005
BUSY_RETRY_MOST_S = 0.0005


def _uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path))}?mode={mode}"


def open_read(path: Path) -> sqlite3.Connection:
    """A read-only connection (any number of them read while appends go on). OSError when
    there is no trail there; sqlite3.Error when it cannot be read."""
    if not path.exists():
        raise FileNotFoundError(f"no audit trail at {path}")
    db = sqlite3.connect(_uri(path, "ro"), uri=True, isolation_level=None,
                         check_same_thread=False)
    db.execute("PRAGMA query_only = ON")
    return db


def open_write(path: Path, create: bool, busy_timeout_s: float) -> sqlite3.Connection:
    """The appending connection: the file made (mode 0600) when create and missing, WAL,
    synchronous=FULL, the schema in place. sqlite3.Error or OSError when it cannot be."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    db = sqlite3.connect(_uri(path, "rw"), uri=True, isolation_level=None,
                         check_same_thread=False, timeout=busy_timeout_s)
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL (journal_mode is {mode})")
        db.execute("PRAGMA synchronous = FULL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > FORMAT:
            raise sqlite3.DatabaseError(f"written by a newer tryfleet (format {version})")
        if version < FORMAT:
            db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        db.execute("PRAGMA busy_timeout = 0")  # appends wait in begin_immediate instead
    except BaseException:
        db.close()
        raise
    return db


def _busy(err: sqlite3.OperationalError) -> bool:
    return "locked" in str(err) or "busy" in str(err)


def begin_immediate(db: sqlite3.Connection, timeout_s: float) -> None:
    """BEGIN IMMEDIATE, retried after 50 us (doubling to 0.5 ms) while another process holds
    the write lock. Written here rather than left to SQLite's busy handler, whose first waits
    are 1, 2 and 5 ms: a lock held for a 0.2 ms commit would cost a waiter 1 ms or more."""
    deadline = time.monotonic() + timeout_s
    pause = BUSY_RETRY_FIRST_S
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as err:
            if not _busy(err) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, BUSY_RETRY_MOST_S)


def append(db: sqlite3.Connection, entries: Sequence[Entry], busy_timeout_s: float,
           clock: Callable[[], float] = time.time) -> list[Record]:
    """One transaction: the entries after the head, in order, durable when this returns."""
    begin_immediate(db, busy_timeout_s)
    try:
        last = db.execute(_HEAD).fetchone()
        seq, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS)
        # never before the head's: times follow seq (a clock stepped back waits for it), so
        # a time maps to a seq by bisection, with no index on `at` to write
        at = max(round(clock(), 6), float(last[2]) if last else 0.0)
        out = []
        for e in entries:
            seq += 1
            h = chain_hash(prev, e.content(seq, at))
            out.append(Record(seq, at, e.tenant, e.actor, e.request_id, e.trace_id, e.action,
                              e.sandbox, e.iteration, e.suite, e.host, e.outcome, e.details,
                              prev, h))
            prev = h
        for n in range(0, len(out), ROWS_PER_INSERT):
            _insert(db, out[n:n + ROWS_PER_INSERT])
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return out


def _insert(db: sqlite3.Connection, records: Sequence[Record]) -> None:
    """One INSERT of many rows: one call into SQLite, so the appending thread waits for the
    GIL back once, not once a row (in a busy process each wait can take milliseconds)."""
    values = ", ".join([_ROW] * len(records))
    db.execute(f"INSERT INTO records ({COLUMNS}) VALUES {values}",
               [v for r in records for v in (r.seq, r.at, r.tenant, r.actor, r.request_id,
                                             r.trace_id, r.action, r.sandbox, r.iteration,
                                             r.suite, r.host, r.outcome, r.details,
                                             r.prev_hash, r.hash)])


def head(db: sqlite3.Connection) -> tuple[int, str]:
    """(seq, hash) of the last record; (0, GENESIS) when there is none."""
    row = db.execute(_HEAD).fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS)


def first_at_or_after(db: sqlite3.Connection, since: float) -> int | None:
    """The seq of the first record at or after `since` (None: none is): a bisection on seq,
    since times follow seq (see append); a dozen or two indexed reads."""
    lo, hi = db.execute("SELECT MIN(seq), MAX(seq) FROM records").fetchone()
    if hi is None:
        return None

    def from_(seq: int) -> tuple[int, float]:  # the first record at or after seq
        row = db.execute("SELECT seq, at FROM records WHERE seq >= ? ORDER BY seq LIMIT 1",
                         (seq,)).fetchone()
        return int(row[0]), float(row[1])

    if from_(hi)[1] < since:
        return None
    lo, hi = int(lo), int(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if from_(mid)[1] >= since:
            hi = mid
        else:
            lo = mid + 1
    return from_(lo)[0]


def unavailable(path: Path, err: BaseException) -> AuditUnavailable:
    return AuditUnavailable(f"audit unavailable: the audit trail {path} cannot be written "
                            f"({err}); the action is refused")


__all__ = ["COLUMNS", "FORMAT", "SCHEMA", "append", "begin_immediate", "first_at_or_after",
           "head", "open_read", "open_write", "unavailable"]
