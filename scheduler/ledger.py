"""The durable record of every iteration and attempt: SQLite in WAL mode, the source of truth.

An iteration is committed to disk before submit returns. Its state only moves forward:
QUEUED -> PLACED -> RUNNING -> one terminal state, or back to QUEUED for an infrastructure
retry with the attempt number raised. Every transition after QUEUED is fenced by attempt, so a
stale attempt's late result changes nothing.

Each iteration that reaches a terminal state gets the next `end_seq`, a number never given twice
and increasing in commit order, so a reader can ask for "what ended after N" (`ended_since`)
instead of sending the ids it waits for on every poll.

Iteration ids and suite names are per tenant: rows are keyed by `tenant/id` (ledger_schema.py),
the key the scheduler's core and its writes use; reads take the tenant (ledger_reads.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgpack

from tryfleet.errors import BadRequest, TryfleetError

from . import ledger_reads as reads
from . import ledger_schema
from .core import Abandon, Finish, Launch, MarkCancelled, Requeue
from .ledger_file import LedgerFile
from .ledger_reads import AmbiguousId, Reads, to_row
from .records import IN_FLIGHT, TERMINAL, Iteration, Phase, Row, check_name, qualified

DEFAULT_INFRA_ATTEMPTS = 3
NEXT_END_SEQ = "(SELECT COALESCE(MAX(end_seq), 0) + 1 FROM iterations)"


class LedgerError(TryfleetError):
    """The ledger refused a write."""


class IdReused(LedgerError, BadRequest):
    """An iteration id already recorded with another spec or suite."""


class SuiteBudgetExceeded(LedgerError, BadRequest):
    """More iterations than the suite's budget allows."""


class Ledger(LedgerFile, Reads):
    def __init__(self, path: Path) -> None:
        super().__init__(path, threading.RLock())
        self.commits = 0
        with self._lock:
            ledger_schema.create(self._db)  # an older database is migrated on the way

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:  # re-entered below (an RLock): the count moves with the commit
            with super()._tx() as db:
                yield db
            self.commits += 1

    # ---- submit ----------------------------------------------------------------------------
    def ensure_suite(self, name: str, tenant: str, max_iterations: int | None = None,
                     max_wall_s: float | None = None) -> None:
        """The tenant's suite, made if new; a budget given replaces the one it had."""
        check_name("tenant", tenant)
        check_name("suite", name)
        with self._tx() as db:
            self._ensure_suite(db, name, tenant, max_iterations, max_wall_s)

    @staticmethod
    def _ensure_suite(db: sqlite3.Connection, name: str, tenant: str,
                      max_iterations: int | None, max_wall_s: float | None) -> None:
        db.execute("INSERT OR IGNORE INTO suites VALUES (?, ?, ?, ?, ?)",
                   (tenant, name, time.time(), max_iterations, max_wall_s))
        if max_iterations is not None or max_wall_s is not None:
            db.execute("UPDATE suites SET max_iterations = COALESCE(?, max_iterations), "
                       "max_wall_s = COALESCE(?, max_wall_s) WHERE tenant = ? AND name = ?",
                       (max_iterations, max_wall_s, tenant, name))

    def suite_budget(self, name: str, tenant: str) -> tuple[float, float | None]:
        """(created_at, max_wall_s) of the tenant's suite; (0.0, None) when it is unknown."""
        found = self.suite(tenant, name)
        return (0.0, None) if found is None else (found["created_at"], found["max_wall_s"])

    def submit(self, iterations: Sequence[Iteration], suite: str, tenant: str,
               infra_attempts: int = DEFAULT_INFRA_ATTEMPTS, request_id: str = "",
               key_id: str = "") -> list[str]:
        """Record iterations as QUEUED, all or none; their ids (the tenant's own). Resubmitting
        a known id is a no-op."""
        return [r.id for r in self.submit_rows(iterations, suite, tenant, infra_attempts,
                                               request_id, key_id)]

    def submit_rows(self, iterations: Sequence[Iteration], suite: str, tenant: str,
                    infra_attempts: int = DEFAULT_INFRA_ATTEMPTS, request_id: str = "",
                    key_id: str = "", max_iterations: int | None = None,
                    max_wall_s: float | None = None,
                    before_commit: Callable[[list[Row]], object] | None = None) -> list[Row]:
        """As submit, returning the rows: new ones as QUEUED, known ids as they stand now.
        request_id and key_id: the API request and key that submitted them. The suite is made
        (with the budget given, if any) in the same transaction: a refused submit leaves
        nothing, not even an empty suite. before_commit(new rows): called before the
        transaction commits (the audit trail's records); what it raises refuses them all."""
        check_name("tenant", tenant)
        check_name("suite", suite)
        now = time.time()
        rows = []
        with self._tx() as db:
            self._ensure_suite(db, suite, tenant, max_iterations, max_wall_s)
            budget = db.execute("SELECT max_iterations FROM suites WHERE tenant = ? AND "
                                "name = ?", (tenant, suite)).fetchone()
            (count,) = db.execute("SELECT COUNT(*) FROM iterations WHERE tenant = ? AND "
                                  "suite = ?", (tenant, suite)).fetchone()
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM iterations").fetchone()
            fresh = 0
            for it in iterations:
                iid = it.id or uuid.uuid4().hex[:16]
                key = qualified(tenant, iid)
                spec = msgpack.packb(it.to_wire(), use_bin_type=True)
                old = db.execute("SELECT * FROM iterations WHERE key = ?", (key,)).fetchone()
                if old is not None:
                    if old["spec"] != spec or old["suite"] != suite:
                        raise IdReused(f"iteration id {iid!r} was already submitted with "
                                       "another spec or suite; give it a new id")
                    rows.append(to_row(old))
                    continue
                seq += 1
                fresh += 1
                trace_id = uuid.uuid4().hex
                attempts, runs = max(1, infra_attempts), it.retries + 1
                db.execute(
                    "INSERT INTO iterations (key, id, seq, tenant, suite, trace_id, priority, "
                    "spec, limits, state, max_attempts, runs_left, submitted_at, request_id, "
                    "key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'QUEUED', ?, ?, ?, ?, ?)",
                    (key, iid, seq, tenant, suite, trace_id, it.priority, spec,
                     ",".join(it.limits), attempts, runs, now, request_id, key_id))
                rows.append(Row(id=iid, seq=seq, tenant=tenant, suite=suite, trace_id=trace_id,
                                priority=it.priority, iteration=it, limits=tuple(it.limits),
                                state="QUEUED", attempt=0, max_attempts=attempts,
                                runs_left=runs, host=None, cancel_requested=False,
                                request_id=request_id, key_id=key_id, key=key))
            if budget is not None and budget["max_iterations"] is not None and \
                    count + fresh > budget["max_iterations"]:
                raise SuiteBudgetExceeded(f"suite {suite!r} allows {budget['max_iterations']} "
                                          f"iterations; {count} recorded, {fresh} more refused")
            if before_commit is not None:
                before_commit([r for r in rows if r.seq > seq - fresh])  # the new ones
        return rows

    # ---- what the scheduler's core decided (every write fenced by attempt) -----------------
    # The core knows iterations by their key (records.qualified): Launch.id, Finish.id, ...
    def launch(self, launches: Sequence[Launch]) -> list[bool]:
        """QUEUED -> RUNNING on its host under the attempt the core chose, all in one
        transaction; False for an iteration that was no longer queued at attempt - 1."""
        now = time.time()
        out = []
        with self._tx() as db:
            for lc in launches:
                cur = db.execute(
                    "UPDATE iterations SET state = 'RUNNING', attempt = ?, host = ?, "
                    "started_at = COALESCE(started_at, ?) WHERE key = ? AND attempt = ? AND "
                    "state = 'QUEUED'", (lc.attempt, lc.host, now, lc.id, lc.attempt - 1))
                if cur.rowcount == 1:
                    db.execute("INSERT INTO attempts (iteration_key, attempt, host, placed_at) "
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
                        "infra_tries = ? WHERE key = ? AND attempt = ? AND state IN "
                        "('PLACED', 'RUNNING')", (a.runs_left, a.infra_tries, a.id, a.attempt))
                    self._end_attempt(db, a.id, a.attempt, "RETRIED", a.error)
                    out.append(cur.rowcount == 1)
                elif isinstance(a, Abandon):
                    cur = db.execute("UPDATE iterations SET state = 'INFRA_ERROR', ended_at = ?, "
                                     f"error = ?, end_seq = {NEXT_END_SEQ} WHERE key = ? AND "
                                     "state = 'QUEUED'", (time.time(), a.why, a.id))
                    out.append(cur.rowcount == 1)
                else:
                    cur = db.execute(
                        f"UPDATE iterations SET cancel_requested = 1 WHERE key IN "
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
            f"error = ?, result_attempt = ?, end_seq = {NEXT_END_SEQ} WHERE key = ? AND "
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
    def _end_attempt(db: sqlite3.Connection, key: str, attempt: int, outcome: str,
                     error: str | None) -> None:
        db.execute("UPDATE attempts SET ended_at = ?, outcome = ?, error = ? WHERE "
                   "iteration_key = ? AND attempt = ? AND ended_at IS NULL",
                   (time.time(), outcome, error, key, attempt))

    def recover(self) -> tuple[list[Row], list[tuple[str, float, float]]]:
        """What a (re)started scheduler needs: every iteration that has not ended, in
        admission order, and the suites with a wall budget (suite key, created_at,
        max_wall_s)."""
        rows = self._rows(f"state NOT IN ({reads.marks(TERMINAL)}) ORDER BY priority DESC, seq",
                          TERMINAL)
        with self._lock:
            suites = self._db.execute("SELECT tenant, name, created_at, max_wall_s FROM suites "
                                      "WHERE max_wall_s IS NOT NULL").fetchall()
        return rows, [(qualified(r["tenant"], r["name"]), r["created_at"], r["max_wall_s"])
                      for r in suites]

    # ---- shared-resource limits (sized by admins) ------------------------------------------
    def set_limit(self, name: str, value: int | None, by: str = "") -> None:
        """Size the limit `name` (None: no limit any more), durably."""
        check_name("limit", name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise BadRequest(f"limit {name}: the size must be an integer >= 0, got {value!r}")
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM limits WHERE name = ?", (name,))
            else:
                db.execute("INSERT OR REPLACE INTO limits VALUES (?, ?, ?, ?)",
                           (name, value, time.time(), by))

    # ---- reads the scheduler itself uses (the rest: ledger_reads.Reads) ---------------------
    def queued(self, limit: int = 10_000) -> list[Row]:
        """Queued iterations in admission order; limit -1 for all of them."""
        return self._rows("state = 'QUEUED' AND cancel_requested = 0 ORDER BY priority DESC, "
                          "seq LIMIT ?", (limit,))

    def in_flight(self) -> list[Row]:
        return self._rows(f"state IN ({reads.marks(IN_FLIGHT)}) ORDER BY seq", IN_FLIGHT)


__all__ = ["AmbiguousId", "IdReused", "Ledger", "LedgerError", "Phase", "Row",
           "SuiteBudgetExceeded"]
