"""The durable record of every iteration and attempt: SQLite in WAL mode, the source of truth.

An iteration is committed to disk before submit returns. Its state only moves forward:
QUEUED -> PLACED -> RUNNING -> one terminal state, or back to QUEUED for an infrastructure
retry with the attempt number raised. Every transition after QUEUED is fenced by attempt, so a
stale attempt's late result changes nothing.

Each iteration that reaches a terminal state gets the next `end_seq`, a number never given twice
and increasing in commit order, so a reader can ask for "what ended after N" (`ended_since`)
instead of sending the ids it waits for on every poll.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack

from tryfleet.errors import BadRequest, TryfleetError

from . import ledger_reads as reads
from .core import Abandon, Finish, Launch, MarkCancelled, Requeue
from .records import IN_FLIGHT, TERMINAL, Iteration, Phase, Result, Row

SCHEMA = """
CREATE TABLE IF NOT EXISTS iterations (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    tenant TEXT NOT NULL,
    suite TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    spec BLOB NOT NULL,
    limits TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    runs_left INTEGER NOT NULL,
    host TEXT,
    submitted_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    duration_s REAL,
    exit_code INTEGER,
    signal INTEGER,
    stdout BLOB,
    stderr BLOB,
    stdout_truncated INTEGER NOT NULL DEFAULT 0,
    stderr_truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result_attempt INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    end_seq INTEGER,
    infra_tries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS iterations_state ON iterations(state, priority, seq);
CREATE INDEX IF NOT EXISTS iterations_suite ON iterations(suite);
CREATE TABLE IF NOT EXISTS attempts (
    iteration_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    host TEXT NOT NULL,
    placed_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT,
    error TEXT,
    PRIMARY KEY (iteration_id, attempt)
);
CREATE TABLE IF NOT EXISTS suites (
    name TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at REAL NOT NULL,
    max_iterations INTEGER,
    max_wall_s REAL
);
"""

# After the tables exist and older databases are migrated (they may lack end_seq).
INDEXES = """
CREATE INDEX IF NOT EXISTS iterations_end_seq ON iterations(end_seq);
CREATE INDEX IF NOT EXISTS iterations_suite_end_seq ON iterations(suite, end_seq);
"""

DEFAULT_INFRA_ATTEMPTS = 3
NEXT_END_SEQ = "(SELECT COALESCE(MAX(end_seq), 0) + 1 FROM iterations)"


class LedgerError(TryfleetError):
    """The ledger refused a write."""


class IdReused(LedgerError, BadRequest):
    """An iteration id already recorded with another spec or suite."""


class SuiteBudgetExceeded(LedgerError, BadRequest):
    """More iterations than the suite's budget allows."""


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self.commits = 0
        self._db.executescript(SCHEMA)
        self._migrate()
        self._db.executescript(INDEXES)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _migrate(self) -> None:
        """Bring a database made before a column was added up to this schema. end_seq is given
        to the iterations that had already ended, in the order they ended."""
        with self._lock:
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(iterations)")}
        if "infra_tries" not in columns:
            with self._tx() as db:
                db.execute("ALTER TABLE iterations ADD COLUMN infra_tries INTEGER NOT NULL "
                           "DEFAULT 0")
        if "end_seq" in columns:
            return
        with self._tx() as db:
            db.execute("ALTER TABLE iterations ADD COLUMN end_seq INTEGER")
            ended = db.execute(f"SELECT id FROM iterations WHERE state IN "
                               f"({reads.marks(TERMINAL)}) ORDER BY ended_at, seq",
                               TERMINAL).fetchall()
            db.executemany("UPDATE iterations SET end_seq = ? WHERE id = ?",
                           ((n, r["id"]) for n, r in enumerate(ended, 1)))

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several reads."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.commits += 1

    # ---- submit ----------------------------------------------------------------------------
    def ensure_suite(self, name: str, tenant: str, max_iterations: int | None = None,
                     max_wall_s: float | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO suites VALUES (?, ?, ?, ?, ?)",
                       (name, tenant, time.time(), max_iterations, max_wall_s))
            if max_iterations is not None or max_wall_s is not None:
                db.execute("UPDATE suites SET max_iterations = COALESCE(?, max_iterations), "
                           "max_wall_s = COALESCE(?, max_wall_s) WHERE name = ?",
                           (max_iterations, max_wall_s, name))

    def suite_budget(self, name: str) -> tuple[float, float | None]:
        """(created_at, max_wall_s) of a suite; (0.0, None) when it is unknown."""
        with self._lock:
            r = self._db.execute("SELECT created_at, max_wall_s FROM suites WHERE name = ?",
                                 (name,)).fetchone()
        return (0.0, None) if r is None else (r["created_at"], r["max_wall_s"])

    def submit(self, iterations: Sequence[Iteration], suite: str, tenant: str,
               infra_attempts: int = DEFAULT_INFRA_ATTEMPTS) -> list[str]:
        """Record iterations as QUEUED, all or none. Resubmitting a known id is a no-op."""
        return [r.id for r in self.submit_rows(iterations, suite, tenant, infra_attempts)]

    def submit_rows(self, iterations: Sequence[Iteration], suite: str, tenant: str,
                    infra_attempts: int = DEFAULT_INFRA_ATTEMPTS) -> list[Row]:
        """As submit, returning the rows: new ones as QUEUED, known ids as they stand now."""
        now = time.time()
        rows = []
        with self._tx() as db:
            budget = db.execute("SELECT max_iterations FROM suites WHERE name = ?",
                                (suite,)).fetchone()
            (count,) = db.execute("SELECT COUNT(*) FROM iterations WHERE suite = ?",
                                  (suite,)).fetchone()
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM iterations").fetchone()
            fresh = 0
            for it in iterations:
                iid = it.id or uuid.uuid4().hex[:16]
                spec = msgpack.packb(it.to_wire(), use_bin_type=True)
                old = db.execute("SELECT * FROM iterations WHERE id = ?", (iid,)).fetchone()
                if old is not None:
                    if old["spec"] != spec or old["suite"] != suite:
                        raise IdReused(f"iteration id {iid!r} was already submitted with "
                                          "another spec or suite; give it a new id")
                    rows.append(_row(old))
                    continue
                seq += 1
                fresh += 1
                trace_id = uuid.uuid4().hex
                attempts, runs = max(1, infra_attempts), it.retries + 1
                db.execute(
                    "INSERT INTO iterations (id, seq, tenant, suite, trace_id, priority, spec, "
                    "limits, state, max_attempts, runs_left, submitted_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'QUEUED', ?, ?, ?)",
                    (iid, seq, tenant, suite, trace_id, it.priority, spec,
                     ",".join(it.limits), attempts, runs, now))
                rows.append(Row(id=iid, seq=seq, tenant=tenant, suite=suite, trace_id=trace_id,
                                priority=it.priority, iteration=it, limits=tuple(it.limits),
                                state="QUEUED", attempt=0, max_attempts=attempts,
                                runs_left=runs, host=None, cancel_requested=False))
            if budget is not None and budget["max_iterations"] is not None and \
                    count + fresh > budget["max_iterations"]:
                raise SuiteBudgetExceeded(f"suite {suite!r} allows {budget['max_iterations']} "
                                  f"iterations; {count} recorded, {fresh} more refused")
        return rows

    # ---- what the scheduler's core decided (every write fenced by attempt) -----------------
    def launch(self, launches: Sequence[Launch]) -> list[bool]:
        """QUEUED -> RUNNING on its host under the attempt the core chose, all in one
        transaction; False for an iteration that was no longer queued at attempt - 1."""
        now = time.time()
        out = []
        with self._tx() as db:
            for lc in launches:
                cur = db.execute(
                    "UPDATE iterations SET state = 'RUNNING', attempt = ?, host = ?, "
                    "started_at = COALESCE(started_at, ?) WHERE id = ? AND attempt = ? AND "
                    "state = 'QUEUED'", (lc.attempt, lc.host, now, lc.id, lc.attempt - 1))
                if cur.rowcount == 1:
                    db.execute("INSERT INTO attempts (iteration_id, attempt, host, placed_at) "
                               "VALUES (?, ?, ?, ?)", (lc.id, lc.attempt, lc.host, now))
                out.append(cur.rowcount == 1)
        return out

    def commit(self, actions: Sequence[Finish | Requeue | Abandon | MarkCancelled]
               ) -> list[bool]:
        """Record what became of iterations, all in one transaction; for each action, whether
        it applied (False: the ledger already holds a later attempt or an ending)."""
        out = []
        with self._tx() as db:
            for a in actions:
                if isinstance(a, Finish):
                    out.append(self._finish(db, a))
                elif isinstance(a, Requeue):
                    cur = db.execute(
                        "UPDATE iterations SET state = 'QUEUED', host = NULL, runs_left = ?, "
                        "infra_tries = ? WHERE id = ? AND attempt = ? AND state IN "
                        "('PLACED', 'RUNNING')", (a.runs_left, a.infra_tries, a.id, a.attempt))
                    self._end_attempt(db, a.id, a.attempt, "RETRIED", a.error)
                    out.append(cur.rowcount == 1)
                elif isinstance(a, Abandon):
                    cur = db.execute("UPDATE iterations SET state = 'INFRA_ERROR', ended_at = ?, "
                                     f"error = ?, end_seq = {NEXT_END_SEQ} WHERE id = ? AND "
                                     "state = 'QUEUED'", (time.time(), a.why, a.id))
                    out.append(cur.rowcount == 1)
                else:
                    cur = db.execute(
                        f"UPDATE iterations SET cancel_requested = 1 WHERE id IN "
                        f"({reads.marks(a.ids)}) AND state NOT IN ({reads.marks(TERMINAL)})",
                        (*a.ids, *TERMINAL))
                    out.append(cur.rowcount == len(a.ids))
        return out

    @classmethod
    def _finish(cls, db: sqlite3.Connection, a: Finish) -> bool:
        now = time.time()
        o = a.outcome
        cur = db.execute(
            "UPDATE iterations SET state = ?, ended_at = ?, duration_s = ?, exit_code = ?, "
            "signal = ?, stdout = ?, stderr = ?, stdout_truncated = ?, stderr_truncated = ?, "
            f"error = ?, result_attempt = ?, end_seq = {NEXT_END_SEQ} WHERE id = ? AND "
            "attempt = ? AND "
            + ("state = 'QUEUED'" if a.queued else "state IN ('PLACED', 'RUNNING')"),
            (a.state.value, now, o.duration_s if o else None, o.exit_code if o else None,
             o.signal if o else None, o.stdout if o else b"", o.stderr if o else b"",
             int(bool(o and o.stdout_truncated)), int(bool(o and o.stderr_truncated)),
             a.error if a.error is not None else (o.error if o else None),
             None if a.queued else a.attempt, a.id, a.attempt))
        if not a.queued:
            cls._end_attempt(db, a.id, a.attempt, a.state.value, a.error)
        return cur.rowcount == 1

    @staticmethod
    def _end_attempt(db: sqlite3.Connection, iid: str, attempt: int, outcome: str,
                     error: str | None) -> None:
        db.execute("UPDATE attempts SET ended_at = ?, outcome = ?, error = ? WHERE "
                   "iteration_id = ? AND attempt = ? AND ended_at IS NULL",
                   (time.time(), outcome, error, iid, attempt))

    def recover(self) -> tuple[list[Row], list[tuple[str, float, float]]]:
        """What a (re)started scheduler needs: every iteration that has not ended, in
        admission order, and the suites with a wall budget (name, created_at, max_wall_s)."""
        rows = self._rows(f"state NOT IN ({reads.marks(TERMINAL)}) ORDER BY priority DESC, seq",
                          TERMINAL)
        with self._lock:
            suites = self._db.execute("SELECT name, created_at, max_wall_s FROM suites WHERE "
                                      "max_wall_s IS NOT NULL").fetchall()
        return rows, [(r["name"], r["created_at"], r["max_wall_s"]) for r in suites]

    # ---- reads -----------------------------------------------------------------------------
    def queued(self, limit: int = 10_000) -> list[Row]:
        """Queued iterations in admission order; limit -1 for all of them."""
        return self._rows("state = 'QUEUED' AND cancel_requested = 0 ORDER BY priority DESC, "
                          "seq LIMIT ?", (limit,))

    def in_flight(self) -> list[Row]:
        return self._rows(f"state IN ({reads.marks(IN_FLIGHT)}) ORDER BY seq", IN_FLIGHT)

    def get_row(self, iid: str) -> Row | None:
        rows = self._rows("id = ?", (iid,))
        return rows[0] if rows else None

    def _rows(self, where: str, args: Iterable[Any]) -> list[Row]:
        with self._lock:
            found = self._db.execute(f"SELECT * FROM iterations WHERE {where}",
                                     tuple(args)).fetchall()
        return [_row(r) for r in found]

    def result(self, iid: str) -> Result | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM iterations WHERE id = ?", (iid,)).fetchone()
        return None if r is None else reads.to_result(r)

    def results(self, *, suite: str | None = None, ids: Sequence[str] | None = None,
                states: Sequence[str] | None = None, limit: int = 100_000,
                output: bool = True) -> list[Result]:
        """In submission order; any number of ids; without stdout and stderr (empty strings)
        when not `output`."""
        with self._read() as db:
            return reads.results(db, suite=suite, ids=ids, states=states, limit=limit,
                                 output=output)

    def ended_since(self, cursor: int, *, suite: str | None = None,
                    ids: Sequence[str] | None = None, limit: int = 1000
                    ) -> tuple[list[Result], int]:
        """The iterations (of suite, among ids) that ended after `cursor`, in the order they
        ended, and the cursor to ask with next (see reads.ended_since). Start at 0."""
        with self._read() as db:
            return reads.ended_since(db, cursor, suite=suite, ids=ids, limit=limit)

    def output(self, iid: str, out_offset: int = 0, err_offset: int = 0
               ) -> tuple[bytes, bytes] | None:
        """The recorded stdout and stderr bytes past the offsets; None for an unknown id."""
        with self._lock:
            return reads.output(self._db, iid, out_offset, err_offset)

    def counts(self, suite: str | None = None) -> dict[str, int]:
        where, args = ("suite = ?", (suite,)) if suite else ("1 = 1", ())
        with self._lock:
            found = self._db.execute(f"SELECT state, COUNT(*) AS n FROM iterations WHERE "
                                     f"{where} GROUP BY state", args).fetchall()
        return {r["state"]: r["n"] for r in found}

    def suites(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute("SELECT * FROM suites").fetchall()]

    def attempts(self, iid: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute(
                "SELECT * FROM attempts WHERE iteration_id = ? ORDER BY attempt", (iid,))]


def _row(r: sqlite3.Row) -> Row:
    spec = msgpack.unpackb(r["spec"], raw=False)
    return Row(
        id=r["id"], seq=r["seq"], tenant=r["tenant"], suite=r["suite"], trace_id=r["trace_id"],
        priority=r["priority"], iteration=Iteration.from_wire(spec),
        limits=tuple(x for x in r["limits"].split(",") if x), state=r["state"],
        attempt=r["attempt"], max_attempts=r["max_attempts"], runs_left=r["runs_left"],
        host=r["host"], cancel_requested=bool(r["cancel_requested"]),
        infra_tries=r["infra_tries"],
    )


__all__ = ["IdReused", "Ledger", "LedgerError", "Phase", "Row",
           "SuiteBudgetExceeded"]
