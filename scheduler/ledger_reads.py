"""The ledger's read path: listings, results by id (any number of ids), what ended since a
cursor, recorded output by offset, counts, suites and limits. `Reads` holds them over one
connection; the Ledger (which also writes) and `LedgerView` (read-only, for the gateway on the
head: reads there cost no call to the scheduler) both are Reads.

Ids and suites are per tenant. Every read takes the tenant; `tenant=None` reads every tenant's
(an admin's view), where an iteration id used by several tenants is ambiguous (AmbiguousId).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack

from tryfleet.errors import BadRequest

from .records import Iteration, Result, Row, qualified

IN_LIST_MAX = 500  # more ids than this go through a temp table (SQLite allows 32,766 params)
PAGE_BYTES = 32 * 1024 * 1024  # ended_since stops adding results past this much output
# Every column a Result needs, with the output left out (a listing does not carry it).
NO_OUTPUT = ("id, state, exit_code, NULL AS stdout, NULL AS stderr, stdout_truncated, "
             "stderr_truncated, started_at, ended_at, duration_s, attempt, host, trace_id, "
             "suite, tenant, error, end_seq, request_id, key_id, submitted_at, seq")


class AmbiguousId(BadRequest):
    """An iteration id asked for without a tenant that several tenants use."""


@contextmanager
def only_ids(db: sqlite3.Connection, ids: Sequence[str] | None, tenant: str | None
             ) -> Iterator[tuple[str, tuple[str, ...]]]:
    """A WHERE clause (and its parameters) keeping these ids (the tenant's, or any tenant's
    when tenant is None), however many there are: a list of parameters for a few, a temp table
    of them beyond IN_LIST_MAX."""
    if ids is None:
        yield "1 = 1", ()
        return
    column, values = ("id", tuple(ids)) if tenant is None else \
        ("key", tuple(qualified(tenant, i) for i in ids))
    if len(values) <= IN_LIST_MAX:
        yield f"{column} IN ({marks(values)})", values
        return
    db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (v TEXT PRIMARY KEY)")
    db.executemany("INSERT OR IGNORE INTO temp.wanted VALUES (?)", ((v,) for v in values))
    try:
        yield f"{column} IN (SELECT v FROM temp.wanted)", ()
    finally:
        db.execute("DELETE FROM temp.wanted")


def _where(tenant: str | None, suite: str | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if tenant is not None:
        clauses.append("tenant = ?")
        args.append(tenant)
    if suite is not None:
        clauses.append("suite = ?")
        args.append(suite)
    return clauses, args


def results(db: sqlite3.Connection, *, tenant: str | None, suite: str | None,
            ids: Sequence[str] | None, states: Sequence[str] | None, limit: int, output: bool,
            after_seq: int = 0) -> list[Result]:
    """In submission order, after `after_seq` (a listing's cursor)."""
    clauses, args = _where(tenant, suite)
    if states is not None:
        clauses.append(f"state IN ({marks(states)})")
        args.extend(states)
    if after_seq:
        clauses.append("seq > ?")
        args.append(after_seq)
    columns = "*" if output else NO_OUTPUT
    with only_ids(db, ids, tenant) as (only, only_args):
        where = " AND ".join([only, *clauses])
        found = db.execute(f"SELECT {columns} FROM iterations WHERE {where} ORDER BY seq "
                           "LIMIT ?", (*only_args, *args, limit)).fetchall()
    return [to_result(r) for r in found]


def ended_since(db: sqlite3.Connection, cursor: int, *, tenant: str | None, suite: str | None,
                ids: Sequence[str] | None, limit: int, output: bool = True
                ) -> tuple[list[Result], int]:
    """What ended after `cursor` (of tenant and suite, among ids), in the order it ended, and
    the cursor to ask with next. A page stops at `limit` results or once it holds PAGE_BYTES of
    output (the cursor is then the last one returned); otherwise the cursor moves past
    everything that has ended so far, so a filtered reader skips what others finished. Run it in
    one read transaction: the high-water mark and the rows must come from one snapshot."""
    clauses, args = _where(tenant, suite)
    clauses.insert(0, "end_seq > ?")
    args.insert(0, cursor)
    got: list[Result] = []
    size = 0
    (top,) = db.execute("SELECT COALESCE(MAX(end_seq), 0) FROM iterations").fetchone()
    columns = "*" if output else NO_OUTPUT
    with only_ids(db, ids, tenant) as (only, only_args):
        rows = db.execute(f"SELECT {columns} FROM iterations WHERE {' AND '.join(clauses)} "
                          f"AND {only} ORDER BY end_seq", (*args, *only_args))
        for r in rows:
            got.append(to_result(r))
            size += len(r["stdout"] or b"") + len(r["stderr"] or b"")
            if len(got) >= limit or size >= PAGE_BYTES:
                return got, int(r["end_seq"])
    return got, max(int(top), cursor)


def output(db: sqlite3.Connection, key: str, out_offset: int, err_offset: int
           ) -> tuple[bytes, bytes] | None:
    """The recorded stdout and stderr bytes past the offsets; None for an unknown key."""
    r = db.execute("SELECT substr(stdout, ? + 1), substr(stderr, ? + 1) FROM iterations "
                   "WHERE key = ?", (max(0, out_offset), max(0, err_offset), key)).fetchone()
    return None if r is None else (_bytes(r[0]), _bytes(r[1]))


def marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values) or "NULL"


def _bytes(value: bytes | str | None) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return bytes(value or b"")


def _text(blob: bytes | str | None) -> str:
    if isinstance(blob, str):
        return blob
    return (blob or b"").decode("utf-8", errors="replace")


def to_result(r: sqlite3.Row) -> Result:
    return Result(
        id=r["id"], state=r["state"], exit_code=r["exit_code"], stdout=_text(r["stdout"]),
        stderr=_text(r["stderr"]), stdout_truncated=bool(r["stdout_truncated"]),
        stderr_truncated=bool(r["stderr_truncated"]), started_at=r["started_at"],
        ended_at=r["ended_at"], duration_s=r["duration_s"], attempts=r["attempt"],
        host=r["host"], trace_id=r["trace_id"], suite=r["suite"], tenant=r["tenant"],
        error=r["error"], request_id=r["request_id"], key_id=r["key_id"],
        submitted_at=r["submitted_at"], end_seq=r["end_seq"], seq=r["seq"],
    )


def to_row(r: sqlite3.Row) -> Row:
    spec = msgpack.unpackb(r["spec"], raw=False)
    return Row(
        id=r["id"], seq=r["seq"], tenant=r["tenant"], suite=r["suite"], trace_id=r["trace_id"],
        priority=r["priority"], iteration=Iteration.from_wire(spec),
        limits=tuple(x for x in r["limits"].split(",") if x), state=r["state"],
        attempt=r["attempt"], max_attempts=r["max_attempts"], runs_left=r["runs_left"],
        host=r["host"], cancel_requested=bool(r["cancel_requested"]),
        infra_tries=r["infra_tries"], request_id=r["request_id"], key_id=r["key_id"],
        key=r["key"],
    )


class Reads:
    """Every read of the ledger over one connection (used by one thread at a time)."""

    _db: sqlite3.Connection
    _lock: threading.Lock | threading.RLock

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One consistent snapshot for several reads."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    def _rows(self, where: str, args: Sequence[Any]) -> list[Row]:
        with self._lock:
            found = self._db.execute(f"SELECT * FROM iterations WHERE {where}",
                                     tuple(args)).fetchall()
        return [to_row(r) for r in found]

    def get_row(self, iid: str, tenant: str | None = None) -> Row | None:
        """The tenant's iteration `iid`; with tenant None, the one iteration of any tenant with
        that id (AmbiguousId when several tenants use it). None when there is none."""
        if tenant is not None:
            rows = self._rows("key = ?", (qualified(tenant, iid),))
        else:
            rows = self._rows("id = ? ORDER BY tenant LIMIT 11", (iid,))
            if len(rows) > 1:
                raise AmbiguousId(f"iteration id {iid!r} is used by several tenants "
                                  f"({', '.join(r.tenant for r in rows[:10])}): name the "
                                  "tenant")
        return rows[0] if rows else None

    def _key(self, iid: str, tenant: str | None) -> str | None:
        if tenant is not None:
            return qualified(tenant, iid)
        row = self.get_row(iid)
        return None if row is None else row.key

    def result(self, iid: str, tenant: str | None = None) -> Result | None:
        key = self._key(iid, tenant)
        with self._lock:
            r = self._db.execute("SELECT * FROM iterations WHERE key = ?", (key,)).fetchone()
        return None if r is None else to_result(r)

    def results(self, *, tenant: str | None = None, suite: str | None = None,
                ids: Sequence[str] | None = None, states: Sequence[str] | None = None,
                limit: int = 100_000, output: bool = True, after_seq: int = 0) -> list[Result]:
        """In submission order (after the seq `after_seq`); any number of ids; without stdout
        and stderr (empty strings) when not `output`."""
        with self._read() as db:
            return results(db, tenant=tenant, suite=suite, ids=ids, states=states, limit=limit,
                           output=output, after_seq=after_seq)

    def ended_since(self, cursor: int, *, tenant: str | None = None, suite: str | None = None,
                    ids: Sequence[str] | None = None, limit: int = 1000, output: bool = True
                    ) -> tuple[list[Result], int]:
        """The iterations (of tenant and suite, among ids) that ended after `cursor`, in the
        order they ended, and the cursor to ask with next (see ended_since). Start at 0."""
        with self._read() as db:
            return ended_since(db, cursor, tenant=tenant, suite=suite, ids=ids, limit=limit,
                               output=output)

    def top_end_seq(self) -> int:
        """The cursor of the last iteration that ended (0 before any)."""
        with self._lock:
            (top,) = self._db.execute("SELECT COALESCE(MAX(end_seq), 0) FROM iterations"
                                      ).fetchone()
        return int(top)

    def output(self, iid: str, out_offset: int = 0, err_offset: int = 0,
               tenant: str | None = None) -> tuple[bytes, bytes] | None:
        """The recorded stdout and stderr bytes past the offsets; None for an unknown id."""
        key = self._key(iid, tenant)
        with self._lock:
            return None if key is None else output(self._db, key, out_offset, err_offset)

    def counts(self, suite: str | None = None, tenant: str | None = None) -> dict[str, int]:
        """How many iterations are in each state (of tenant and suite)."""
        clauses, args = _where(tenant, suite)
        where = " AND ".join(clauses) or "1 = 1"
        with self._lock:
            found = self._db.execute(f"SELECT state, COUNT(*) AS n FROM iterations WHERE "
                                     f"{where} GROUP BY state", args).fetchall()
        return {r["state"]: r["n"] for r in found}

    def counts_by(self, *columns: str) -> dict[tuple[str, ...], dict[str, int]]:
        """Counts per state for each value of columns (of "tenant", "suite"), in one query."""
        assert set(columns) <= {"tenant", "suite"} and columns
        names = ", ".join(columns)
        with self._lock:
            found = self._db.execute(f"SELECT {names}, state, COUNT(*) AS n FROM iterations "
                                     f"GROUP BY {names}, state").fetchall()
        out: dict[tuple[str, ...], dict[str, int]] = {}
        for r in found:
            out.setdefault(tuple(r[c] for c in columns), {})[r["state"]] = r["n"]
        return out

    def tenant_counts(self) -> dict[str, Any]:
        """{"counts": iterations per state, "tenants": {tenant: per state}}, in one query (a
        scan of the whole ledger)."""
        by_tenant = self.counts_by("tenant")
        counts: dict[str, int] = {}
        for per_state in by_tenant.values():
            for state, n in per_state.items():
                counts[state] = counts.get(state, 0) + n
        return {"counts": counts, "tenants": {t: c for (t,), c in by_tenant.items()}}

    def suite(self, tenant: str, name: str) -> dict[str, Any] | None:
        """The tenant's suite (tenant, name, created_at, max_iterations, max_wall_s)."""
        with self._lock:
            r = self._db.execute("SELECT * FROM suites WHERE tenant = ? AND name = ?",
                                 (tenant, name)).fetchone()
        return None if r is None else dict(r)

    def recent_suites(self, limit: int) -> list[tuple[str, str]]:
        """(tenant, name) of the `limit` suites made last, newest first."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(
                "SELECT tenant, name FROM suites ORDER BY created_at DESC LIMIT ?", (limit,))]

    def suite_tenants(self, name: str) -> list[str]:
        """The tenants that have a suite of this name."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT tenant FROM suites WHERE name = ? ORDER BY tenant", (name,))]

    def suites(self, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        with self._lock:
            return [dict(r) for r in self._db.execute(
                f"SELECT * FROM suites {where} ORDER BY tenant, name", args).fetchall()]

    def attempts(self, iid: str, tenant: str | None = None) -> list[dict[str, Any]]:
        """The attempts of an iteration, first to last (iteration_id: its own id)."""
        key = self._key(iid, tenant)
        with self._lock:
            return [dict(r) for r in self._db.execute(
                "SELECT i.id AS iteration_id, a.attempt, a.host, a.placed_at, a.ended_at, "
                "a.outcome, a.error FROM attempts a JOIN iterations i ON i.key = "
                "a.iteration_key WHERE a.iteration_key = ? ORDER BY a.attempt", (key,))]

    def ended_per_minute(self, since: float, tenant: str | None = None
                         ) -> list[tuple[int, str, int]]:
        """How many iterations (of tenant) ended in each minute since `since`, by state:
        (minute as seconds since the epoch, state, count), oldest first."""
        clauses, args = _where(tenant, None)
        where = " AND ".join(["ended_at >= ?", *clauses])
        with self._lock:
            return [(int(r[0]) * 60, r[1], r[2]) for r in self._db.execute(
                f"SELECT CAST(ended_at / 60 AS INTEGER) AS m, state, COUNT(*) FROM iterations "
                f"WHERE {where} GROUP BY m, state ORDER BY m", [since, *args])]

    def suites_progress(self, tenant: str | None = None, limit: int = 20
                        ) -> list[dict[str, Any]]:
        """The newest suites (of tenant), newest first, each with its counts by state."""
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        with self._read() as db:
            found = [dict(r) for r in db.execute(
                f"SELECT * FROM suites {where} ORDER BY created_at DESC LIMIT ?",
                (*args, limit))]
            for s in found:  # in the same snapshot (the lock is re-entered)
                s["counts"] = self.counts(s["name"], s["tenant"])
        return found

    def limits(self) -> dict[str, int]:
        """The sizes admins set for shared-resource limits."""
        with self._lock:
            return {r["name"]: r["value"] for r in self._db.execute(
                "SELECT name, value FROM limits ORDER BY name")}


class LedgerView(Reads):
    """The ledger opened read-only: for readers beside the scheduler, e.g. the gateway on the
    head. SQLite's WAL lets them read while the scheduler writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                                   isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["IN_LIST_MAX", "PAGE_BYTES", "AmbiguousId", "LedgerView", "Reads", "ended_since",
           "marks", "only_ids", "output", "results", "to_result", "to_row"]
