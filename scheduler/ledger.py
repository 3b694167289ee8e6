"""The durable record of every iteration and attempt: SQLite in WAL mode, the source of truth.

An iteration is committed to disk before submit returns. Its state only moves forward:
QUEUED -> PLACED -> RUNNING -> one terminal state, or back to QUEUED for an infrastructure
retry with the attempt number raised. Every transition after QUEUED is fenced by attempt, so a
stale attempt's late result changes nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from tryfleet.wire import Failure, Outcome, State

from .records import IN_FLIGHT, TERMINAL, Iteration, Phase, Result

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
    cancel_requested INTEGER NOT NULL DEFAULT 0
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

DEFAULT_INFRA_ATTEMPTS = 3


class LedgerError(RuntimeError):
    """The ledger refused a write (an id reused with another spec, a budget exceeded, ...)."""


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    seq: int
    tenant: str
    suite: str
    trace_id: str
    priority: int
    iteration: Iteration
    limits: tuple[str, ...]
    state: str
    attempt: int
    max_attempts: int
    runs_left: int
    host: str | None
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Report:
    """What became of one attempt: its host's outcome, or the scheduler's own conclusion when
    the host cannot say (see `lost`)."""

    iid: str
    attempt: int
    outcome: Outcome

    @classmethod
    def lost(cls, iid: str, attempt: int, host: str, error: str, failure: Failure) -> Report:
        """An attempt that ended without word from its host (LOST, HOST_LOST): INFRA_ERROR."""
        return cls(iid, attempt, Outcome(iid, attempt, State.INFRA_ERROR, host, error=error,
                                         failure=failure))

    @property
    def state(self) -> str:
        return self.outcome.state.value

    @property
    def retry_infra(self) -> bool:
        """Whether an INFRA_ERROR may be tried again: not for a request that can never run."""
        return self.outcome.failure is not Failure.BAD_REQUEST


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
        self._db.executescript(SCHEMA)
        self.last_cancelled_queued = 0
        self.commits = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

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
                        raise LedgerError(f"iteration id {iid!r} was already submitted with "
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
                raise LedgerError(f"suite {suite!r} allows {budget['max_iterations']} "
                                  f"iterations; {count} recorded, {fresh} more refused")
        return rows

    # ---- transitions (fenced) ---------------------------------------------------------------
    def place(self, iid: str, host: str) -> int | None:
        """QUEUED -> PLACED on host with the next attempt number; None if no longer queued."""
        return self.place_many([(iid, host)])[0]

    def place_many(self, placements: Sequence[tuple[str, str]]) -> list[int | None]:
        """place() for each (id, host), in one transaction: the attempt numbers, in order."""
        now = time.time()
        out: list[int | None] = []
        with self._tx() as db:
            for iid, host in placements:
                row = db.execute("SELECT attempt FROM iterations WHERE id = ? AND "
                                 "state = 'QUEUED' AND cancel_requested = 0", (iid,)).fetchone()
                if row is None:
                    out.append(None)
                    continue
                attempt = row["attempt"] + 1
                db.execute("UPDATE iterations SET state = 'PLACED', attempt = ?, host = ? "
                           "WHERE id = ?", (attempt, host, iid))
                db.execute("INSERT INTO attempts (iteration_id, attempt, host, placed_at) "
                           "VALUES (?, ?, ?, ?)", (iid, attempt, host, now))
                out.append(attempt)
        return out

    def running(self, iid: str, attempt: int) -> bool:
        return self.running_many([(iid, attempt)])[0]

    def running_many(self, attempts: Sequence[tuple[str, int]]) -> list[bool]:
        """PLACED -> RUNNING for each (id, attempt) still current, in one transaction."""
        now = time.time()
        with self._tx() as db:
            return [db.execute("UPDATE iterations SET state = 'RUNNING', "
                               "started_at = COALESCE(started_at, ?) WHERE id = ? AND "
                               "attempt = ? AND state = 'PLACED'",
                               (now, iid, attempt)).rowcount == 1
                    for iid, attempt in attempts]

    def finish(self, iid: str, attempt: int, state: str, outcome: Outcome | None = None) -> bool:
        """Commit the result of `attempt`; False (nothing written) if the attempt is stale."""
        if state not in TERMINAL:
            raise ValueError(f"{state} is not a terminal state")
        with self._tx() as db:
            return self._finish(db, iid, attempt, state, outcome)

    @classmethod
    def _finish(cls, db: sqlite3.Connection, iid: str, attempt: int, state: str,
                outcome: Outcome | None) -> bool:
        now = time.time()
        o = outcome or Outcome(iid, attempt, State(state), "")
        cur = db.execute(
            "UPDATE iterations SET state = ?, ended_at = ?, duration_s = ?, exit_code = ?, "
            "signal = ?, stdout = ?, stderr = ?, stdout_truncated = ?, stderr_truncated = ?, "
            "error = ?, result_attempt = ?, started_at = COALESCE(started_at, ?) "
            "WHERE id = ? AND attempt = ? AND state IN ('PLACED', 'RUNNING')",
            (state, now, o.duration_s, o.exit_code, o.signal, o.stdout, o.stderr,
             int(o.stdout_truncated), int(o.stderr_truncated), o.error, attempt,
             o.started_at or now, iid, attempt))
        cls._end_attempt(db, iid, attempt, state, o.error)
        return cur.rowcount == 1

    def retry(self, iid: str, attempt: int, error: str, *, user_failure: bool = False) -> bool:
        """Back to QUEUED for another attempt, if the budget allows; False if stale or spent."""
        with self._tx() as db:
            row = db.execute("SELECT attempt, max_attempts, runs_left, cancel_requested "
                             "FROM iterations WHERE id = ? AND attempt = ? AND state IN "
                             "('PLACED', 'RUNNING')", (iid, attempt)).fetchone()
            return row is not None and self._retry(db, row, iid, attempt, error, user_failure)

    @classmethod
    def _retry(cls, db: sqlite3.Connection, row: sqlite3.Row, iid: str, attempt: int,
               error: str, user_failure: bool) -> bool:
        if row["cancel_requested"]:
            return False
        if user_failure and row["runs_left"] <= 1:
            return False
        if not user_failure and cls._infra_tries(db, iid) >= row["max_attempts"]:
            return False
        db.execute("UPDATE iterations SET state = 'QUEUED', host = NULL, "
                   "runs_left = runs_left - ? WHERE id = ?", (int(user_failure), iid))
        cls._end_attempt(db, iid, attempt, "RETRIED", error)
        return True

    def settle(self, reports: Sequence[Report]) -> list[str | None]:
        """Record what became of attempts, all in one transaction. For each report, in order:
        QUEUED when the iteration goes back for another attempt (an infrastructure error
        within its budget, or a failed command with re-runs left), else the terminal state
        committed (CANCELLED wins over anything but SUCCEEDED once a cancel was asked for), or
        None when the attempt is stale and nothing was written."""
        out: list[str | None] = []
        with self._tx() as db:
            for rep in reports:
                row = db.execute("SELECT attempt, max_attempts, runs_left, cancel_requested "
                                 "FROM iterations WHERE id = ? AND attempt = ? AND state IN "
                                 "('PLACED', 'RUNNING')", (rep.iid, rep.attempt)).fetchone()
                if row is None:
                    out.append(None)
                    continue
                state = rep.state
                if row["cancel_requested"] and state != "SUCCEEDED":
                    state = "CANCELLED"
                again = False
                if state == "INFRA_ERROR" and rep.retry_infra:
                    again = self._retry(db, row, rep.iid, rep.attempt,
                                        rep.outcome.error or "infrastructure error", False)
                elif state == "FAILED":
                    again = self._retry(db, row, rep.iid, rep.attempt, "command failed", True)
                if again:
                    out.append("QUEUED")
                else:
                    self._finish(db, rep.iid, rep.attempt, state, rep.outcome)
                    out.append(state)
        return out

    @staticmethod
    def _infra_tries(db: sqlite3.Connection, iid: str) -> int:
        (n,) = db.execute("SELECT COUNT(*) FROM attempts WHERE iteration_id = ? AND "
                          "(outcome IS NULL OR outcome IN ('RETRIED', 'INFRA_ERROR'))",
                          (iid,)).fetchone()
        return int(n)

    @staticmethod
    def _end_attempt(db: sqlite3.Connection, iid: str, attempt: int, outcome: str,
                     error: str | None) -> None:
        db.execute("UPDATE attempts SET ended_at = ?, outcome = ?, error = ? WHERE "
                   "iteration_id = ? AND attempt = ? AND ended_at IS NULL",
                   (time.time(), outcome, error, iid, attempt))

    def abandon(self, iid: str, error: str) -> bool:
        """QUEUED -> INFRA_ERROR without an attempt: it can never be placed."""
        with self._tx() as db:
            cur = db.execute("UPDATE iterations SET state = 'INFRA_ERROR', ended_at = ?, "
                             "error = ? WHERE id = ? AND state = 'QUEUED'",
                             (time.time(), error, iid))
            return cur.rowcount == 1

    def cancel(self, *, iid: str | None = None, suite: str | None = None,
               tenant: str | None = None, everything: bool = False,
               reason: str = "cancelled") -> list[tuple[str, int, str]]:
        """Queued matches end CANCELLED now; in-flight ones are flagged and returned
        as (id, attempt, host) for the dispatcher to stop."""
        where, args = _selector(iid, suite, tenant, everything)
        now = time.time()
        with self._tx() as db:
            db.execute(f"UPDATE iterations SET cancel_requested = 1 WHERE {where} AND state NOT IN "
                       f"({_marks(TERMINAL)})", (*args, *TERMINAL))
            cur = db.execute(f"UPDATE iterations SET state = 'CANCELLED', ended_at = ?, "
                             f"error = ? WHERE {where} AND state = 'QUEUED'", (now, reason, *args))
            self.last_cancelled_queued = cur.rowcount
            rows = db.execute(f"SELECT id, attempt, host FROM iterations WHERE {where} AND "
                              f"state IN ({_marks(IN_FLIGHT)})", (*args, *IN_FLIGHT)).fetchall()
        return [(r["id"], r["attempt"], r["host"]) for r in rows]

    # ---- reads -----------------------------------------------------------------------------
    def queued(self, limit: int = 10_000) -> list[Row]:
        """Queued iterations in admission order; limit -1 for all of them."""
        return self._rows("state = 'QUEUED' AND cancel_requested = 0 ORDER BY priority DESC, "
                          "seq LIMIT ?", (limit,))

    def in_flight(self) -> list[Row]:
        return self._rows(f"state IN ({_marks(IN_FLIGHT)}) ORDER BY seq", IN_FLIGHT)

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
        return None if r is None else _result(r)

    def results(self, *, suite: str | None = None, ids: Sequence[str] | None = None,
                states: Sequence[str] | None = None, limit: int = 100_000) -> list[Result]:
        clauses, args = ["1 = 1"], []
        if suite is not None:
            clauses.append("suite = ?")
            args.append(suite)
        if ids is not None:
            clauses.append(f"id IN ({_marks(ids)})")
            args.extend(ids)
        if states is not None:
            clauses.append(f"state IN ({_marks(states)})")
            args.extend(states)
        with self._lock:
            found = self._db.execute(f"SELECT * FROM iterations WHERE {' AND '.join(clauses)} "
                                     "ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
        return [_result(r) for r in found]

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


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values) or "NULL"


def _selector(iid: str | None, suite: str | None, tenant: str | None,
              everything: bool) -> tuple[str, tuple[Any, ...]]:
    if everything:
        return "1 = 1", ()
    if iid is not None:
        return "id = ?", (iid,)
    if suite is not None:
        return "suite = ?", (suite,)
    if tenant is not None:
        return "tenant = ?", (tenant,)
    raise ValueError("cancel needs an id, a suite, a tenant, or everything=True")


def _row(r: sqlite3.Row) -> Row:
    spec = msgpack.unpackb(r["spec"], raw=False)
    return Row(
        id=r["id"], seq=r["seq"], tenant=r["tenant"], suite=r["suite"], trace_id=r["trace_id"],
        priority=r["priority"], iteration=Iteration.from_wire(spec),
        limits=tuple(x for x in r["limits"].split(",") if x), state=r["state"],
        attempt=r["attempt"], max_attempts=r["max_attempts"], runs_left=r["runs_left"],
        host=r["host"], cancel_requested=bool(r["cancel_requested"]),
    )


def _text(blob: bytes | None) -> str:
    return (blob or b"").decode("utf-8", errors="replace")


def _result(r: sqlite3.Row) -> Result:
    return Result(
        id=r["id"], state=r["state"], exit_code=r["exit_code"], stdout=_text(r["stdout"]),
        stderr=_text(r["stderr"]), stdout_truncated=bool(r["stdout_truncated"]),
        stderr_truncated=bool(r["stderr_truncated"]), started_at=r["started_at"],
        ended_at=r["ended_at"], duration_s=r["duration_s"], attempts=r["attempt"],
        host=r["host"], trace_id=r["trace_id"], suite=r["suite"], tenant=r["tenant"],
        error=r["error"],
    )


__all__ = ["Ledger", "LedgerError", "Phase", "Report", "Row"]
