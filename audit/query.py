"""Reading the trail: records by filter (cursor by seq), one request's trace in order, and an
export since a time. Read-only connections: reads never wait for appends, nor slow them."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from tryfleet.errors import BadRequest

from .record import Record
from .store import COLUMNS, first_at_or_after, open_read

EXPORT_PAGE = 1000
MAX_LIMIT = 10_000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records: every given field must match. `action` is a name (`exec.start`) or a
    family (`exec.*`, or the bare `exec`: every action has a dot); `since` is seconds since
    the epoch (records at or after it)."""

    tenant: str | None = None
    sandbox: str | None = None
    iteration: str | None = None
    request_id: str | None = None
    action: str | None = None
    since: float | None = None
    after_seq: int = 0  # the cursor: records after this seq
    limit: int = 100
    newest: bool = False  # the last `limit` that match (still returned oldest first)

    def where(self) -> tuple[str, list[Any]]:
        terms: list[str] = ["seq > ?"]
        args: list[Any] = [self.after_seq]
        for column in ("tenant", "sandbox", "iteration", "request_id"):
            value = getattr(self, column)
            if value is not None:
                terms.append(f"{column} = ?")
                args.append(value)
        if self.action is not None:
            if self.action.endswith(".*") or "." not in self.action:  # a range, so the
                family = self.action.removesuffix("*").removesuffix(".") + "."  # index serves it
                terms.append("action >= ? AND action < ?")
                args += [family, family[:-1] + "/"]
            else:
                terms.append("action = ?")
                args.append(self.action)
        if self.since is not None:
            terms.append("at >= ?")
            args.append(float(self.since))
        return " AND ".join(terms), args


def parse_since(value: str, now: float | None = None) -> float:
    """A time as people write it: seconds since the epoch, an ISO 8601 time (without a zone:
    this host's local time) or date, or a duration back from now (`90s`, `15m`, `2h`, `7d`).
    BadRequest naming the value."""
    text = value.strip()
    m = _DURATION.match(text)
    if m:
        return (time.time() if now is None else now) - float(m[1]) * _UNIT_S[m[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(f"since {value!r}: expected seconds since the epoch, an ISO 8601 time "
                         "(2026-05-09T10:00:00Z) or a duration back from now (15m, 2h, 7d)"
                         ) from None


def _records(db: sqlite3.Connection, sql: str, args: list[Any]) -> list[Record]:
    return [Record(*row) for row in db.execute(sql, args)]


def _start(db: sqlite3.Connection, f: Filter) -> Filter | None:
    """f with its cursor moved to the first record at or after f.since (None: no record is);
    `at >= since` stays in the query, this only skips what is before it."""
    if f.since is None:
        return f
    first = first_at_or_after(db, float(f.since))
    if first is None:
        return None
    return replace(f, after_seq=max(f.after_seq, first - 1))


def select(path: Path, f: Filter) -> list[Record]:
    """The records that match, oldest first; at most f.limit."""
    limit = max(1, min(f.limit, MAX_LIMIT))
    db = open_read(path)
    try:
        start = _start(db, f)
        if start is None:
            return []
        where, args = start.where()
        order = "DESC" if f.newest else "ASC"
        got = _records(db, f"SELECT {COLUMNS} FROM records WHERE {where} "
                           f"ORDER BY seq {order} LIMIT ?", [*args, limit])
    finally:
        db.close()
    return got[::-1] if f.newest else got


def trace(path: Path, request_id: str, tenant: str | None = None) -> list[Record]:
    """Everything recorded under one request id (across the gateway, the scheduler and the
    hosts), in the order it happened; only `tenant`'s when given."""
    f = Filter(request_id=request_id, tenant=tenant)
    where, args = f.where()
    db = open_read(path)
    try:
        return _records(db, f"SELECT {COLUMNS} FROM records WHERE {where} ORDER BY seq", args)
    finally:
        db.close()


def export(path: Path, since: float | None = None, tenant: str | None = None,
           page: int = EXPORT_PAGE) -> Iterator[Record]:
    """Every record at or after `since` (only `tenant`'s when given), oldest first, read a
    page at a time: a caller can stream millions without holding them."""
    db = open_read(path)
    try:
        f = _start(db, Filter(tenant=tenant, since=since, limit=page))
        while f is not None:
            where, args = f.where()
            got = _records(db, f"SELECT {COLUMNS} FROM records WHERE {where} ORDER BY seq "
                               "LIMIT ?", [*args, page])
            yield from got
            f = replace(f, after_seq=got[-1].seq) if len(got) == page else None
    finally:
        db.close()


def export_lines(path: Path, since: float | None = None, tenant: str | None = None,
                 page: int = EXPORT_PAGE) -> Iterator[str]:
    """`export` as JSON lines, a page of them per item (the API streams these)."""
    lines: list[str] = []
    for r in export(path, since, tenant, page):
        lines.append(json.dumps(r.to_json(), separators=(",", ":"), ensure_ascii=False))
        if len(lines) == page:
            yield "\n".join(lines) + "\n"
            lines = []
    if lines:
        yield "\n".join(lines) + "\n"


__all__ = ["EXPORT_PAGE", "MAX_LIMIT", "Filter", "export", "export_lines", "parse_since",
           "select", "trace"]
