"""The ledger's read path: listings, results by id (any number of ids), what ended since a
cursor, and recorded output by offset. Plain functions over a connection the Ledger holds (and
locks); every function here only reads, except for a temp table of wanted ids."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .records import Result

IN_LIST_MAX = 500  # more ids than this go through a temp table (SQLite allows 32,766 params)
PAGE_BYTES = 32 * 1024 * 1024  # ended_since stops adding results past this much output
# Every column a Result needs, with the output left out (a listing does not carry it).
NO_OUTPUT = ("id, state, exit_code, NULL AS stdout, NULL AS stderr, stdout_truncated, "
             "stderr_truncated, started_at, ended_at, duration_s, attempt, host, trace_id, "
             "suite, tenant, error, end_seq")


@contextmanager
def only_ids(db: sqlite3.Connection, ids: Sequence[str] | None
             ) -> Iterator[tuple[str, tuple[str, ...]]]:
    """A WHERE clause (and its parameters) keeping these ids, however many there are: a list
    of parameters for a few, a temp table of them beyond IN_LIST_MAX."""
    if ids is None:
        yield "1 = 1", ()
    elif len(ids) <= IN_LIST_MAX:
        yield f"id IN ({marks(ids)})", tuple(ids)
    else:
        db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted (id TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO temp.wanted VALUES (?)", ((i,) for i in ids))
        try:
            yield "id IN (SELECT id FROM temp.wanted)", ()
        finally:
            db.execute("DELETE FROM temp.wanted")


def results(db: sqlite3.Connection, *, suite: str | None, ids: Sequence[str] | None,
            states: Sequence[str] | None, limit: int, output: bool) -> list[Result]:
    clauses: list[str] = []
    args: list[Any] = []
    if suite is not None:
        clauses.append("suite = ?")
        args.append(suite)
    if states is not None:
        clauses.append(f"state IN ({marks(states)})")
        args.extend(states)
    columns = "*" if output else NO_OUTPUT
    with only_ids(db, ids) as (only, only_args):
        where = " AND ".join([only, *clauses])
        found = db.execute(f"SELECT {columns} FROM iterations WHERE {where} ORDER BY seq "
                           "LIMIT ?", (*only_args, *args, limit)).fetchall()
    return [to_result(r) for r in found]


def ended_since(db: sqlite3.Connection, cursor: int, *, suite: str | None,
                ids: Sequence[str] | None, limit: int) -> tuple[list[Result], int]:
    """What ended after `cursor` (of suite, among ids), in the order it ended, and the cursor
    to ask with next. A page stops at `limit` results or once it holds PAGE_BYTES of output
    (the cursor is then the last one returned); otherwise the cursor moves past everything
    that has ended so far, so a filtered reader skips what others finished. Run it in one
    read transaction: the high-water mark and the rows must come from one snapshot."""
    clauses: list[str] = ["end_seq > ?"]
    args: list[Any] = [cursor]
    if suite is not None:
        clauses.append("suite = ?")
        args.append(suite)
    got: list[Result] = []
    size = 0
    (top,) = db.execute("SELECT COALESCE(MAX(end_seq), 0) FROM iterations").fetchone()
    with only_ids(db, ids) as (only, only_args):
        rows = db.execute(f"SELECT * FROM iterations WHERE {' AND '.join(clauses)} AND {only} "
                          "ORDER BY end_seq", (*args, *only_args))
        for r in rows:
            got.append(to_result(r))
            size += len(r["stdout"] or b"") + len(r["stderr"] or b"")
            if len(got) >= limit or size >= PAGE_BYTES:
                return got, int(r["end_seq"])
    return got, max(int(top), cursor)


def output(db: sqlite3.Connection, iid: str, out_offset: int, err_offset: int
           ) -> tuple[bytes, bytes] | None:
    """The recorded stdout and stderr bytes past the offsets; None for an unknown id."""
    r = db.execute("SELECT substr(stdout, ? + 1), substr(stderr, ? + 1) FROM iterations "
                   "WHERE id = ?", (max(0, out_offset), max(0, err_offset), iid)).fetchone()
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
        error=r["error"],
    )


__all__ = ["IN_LIST_MAX", "PAGE_BYTES", "ended_since", "marks", "only_ids", "output", "results",
           "to_result"]
