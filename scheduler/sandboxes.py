"""The durable record of interactive sandboxes: one table in the ledger's database, so that a
restart of the scheduler or the gateway forgets none, and an expired one is closed whoever
restarted.

A sandbox is recorded `open` once the scheduler granted it capacity on a host (before the host
opens its VM), and `closed` exactly once, with the reason: closed by request, its timeout
passed, its host was lost, its VM could not be opened. Nothing else changes a closed record.

The scheduler writes; the gateway reads (who owns a sandbox, and where it runs) through its own
connection, which costs microseconds where a call to the scheduler costs milliseconds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tryfleet.errors import BadRequest, NotFound

from .ledger_file import LedgerFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    image TEXT NOT NULL,
    cpus INTEGER NOT NULL,
    mem_mib INTEGER NOT NULL,
    disk_mib INTEGER,
    host TEXT NOT NULL,
    vm TEXT,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    closed_at REAL,
    close_reason TEXT,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_tenant ON sandboxes(tenant, state, seq);
CREATE INDEX IF NOT EXISTS sandboxes_state ON sandboxes(state, seq);
"""

OPEN, CLOSED = "open", "closed"
StateFilter = Literal["open", "closed", "all"]
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class SandboxRecord:
    id: str
    tenant: str
    image: str
    cpus: int
    mem_mib: int
    disk_mib: int | None
    host: str
    state: str  # open or closed
    created_at: float  # wall clock, seconds since the epoch
    expires_at: float
    key_id: str = ""
    request_id: str = ""
    vm: str | None = None
    closed_at: float | None = None
    close_reason: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "metadata": dict(self.metadata)}


def not_found(sid: str) -> NotFound:
    """The one answer for an id nobody used and for another tenant's sandbox."""
    return NotFound(f"no sandbox {sid!r}")


class SandboxBook(LedgerFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._db.executescript(SCHEMA)

    # ---- writes (the scheduler's) ----------------------------------------------------------
    def record(self, rec: SandboxRecord) -> None:
        """Record a sandbox just granted (state open); an id used before is refused."""
        with self._tx() as db:
            try:
                db.execute(
                    "INSERT INTO sandboxes (id, tenant, key_id, request_id, image, cpus, "
                    "mem_mib, disk_mib, host, vm, state, created_at, expires_at, closed_at, "
                    "close_reason, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                    "?, ?, ?)",
                    (rec.id, rec.tenant, rec.key_id, rec.request_id, rec.image, rec.cpus,
                     rec.mem_mib, rec.disk_mib, rec.host, rec.vm, rec.state, rec.created_at,
                     rec.expires_at, rec.closed_at, rec.close_reason,
                     json.dumps(dict(rec.metadata), sort_keys=True)))
            except sqlite3.IntegrityError:
                raise BadRequest(f"sandbox id {rec.id!r} is already recorded") from None

    def set_vm(self, sid: str, vm: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE sandboxes SET vm = ? WHERE id = ? AND state = 'open'", (vm, sid))

    def extend(self, sid: str, expires_at: float) -> bool:
        """The new expiry of an open sandbox; False when it is not open."""
        with self._tx() as db:
            cur = db.execute("UPDATE sandboxes SET expires_at = ? WHERE id = ? AND "
                             "state = 'open'", (expires_at, sid))
        return cur.rowcount == 1

    def close_record(self, sid: str, reason: str, now: float | None = None) -> bool:
        """Closed with its reason, once: False when it was not open (closed, or unknown)."""
        with self._tx() as db:
            cur = db.execute("UPDATE sandboxes SET state = 'closed', closed_at = ?, "
                             "close_reason = ? WHERE id = ? AND state = 'open'",
                             (time.time() if now is None else now, reason, sid))
        return cur.rowcount == 1

    # ---- reads -----------------------------------------------------------------------------
    def get(self, sid: str, tenant: str | None = None) -> SandboxRecord:
        """The sandbox, if `tenant` (None: any) owns it; NotFound alike for an unknown id and
        another tenant's sandbox."""
        with self._lock:
            row = self._db.execute("SELECT * FROM sandboxes WHERE id = ?", (sid,)).fetchone()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise not_found(sid)
        return _record(row)

    def page(self, tenant: str | None = None, state: StateFilter = "open", limit: int = 100,
             cursor: str | None = None, *, metadata: Mapping[str, str] | None = None,
             image: str | None = None, created_after: float | None = None,
             ) -> tuple[list[SandboxRecord], str | None]:
        """A page of sandboxes (of tenant; None: all) in the order they were opened, and the
        cursor of the next page (None after the last); only those whose metadata holds every
        pair of `metadata`, of `image`, and opened at or after `created_after`, if given."""
        if state not in (OPEN, CLOSED, "all"):
            raise BadRequest(f"state must be open, closed or all, got {state!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
        after = _cursor(cursor)
        where: list[str] = ["seq > ?"]
        args: list[Any] = [after]
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if state != "all":
            where.append("state = ?")
            args.append(state)
        for key, value in sorted((metadata or {}).items()):
            where.append("EXISTS (SELECT 1 FROM json_each(sandboxes.metadata) "
                         "WHERE json_each.key = ? AND json_each.value = ?)")
            args += [key, value]
        if image is not None:
            where.append("image = ?")
            args.append(image)
        if created_after is not None:
            where.append("created_at >= ?")
            args.append(created_after)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM sandboxes WHERE {' AND '.join(where)} "
                                    "ORDER BY seq LIMIT ?", (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [_record(r) for r in rows], str(rows[-1]["seq"]) if more else None

    def open_records(self) -> list[SandboxRecord]:
        """Every open sandbox, for a (re)started scheduler."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM sandboxes WHERE state = 'open' "
                                    "ORDER BY seq").fetchall()
        return [_record(r) for r in rows]


def _cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not isinstance(cursor, str) or not cursor.isdigit() or len(cursor) > 18:
        raise BadRequest(f"cursor {cursor!r} is not one this API gave: pass next_cursor from "
                         "the previous page")
    return int(cursor)


def _record(r: sqlite3.Row) -> SandboxRecord:
    return SandboxRecord(
        id=r["id"], tenant=r["tenant"], image=r["image"], cpus=r["cpus"],
        mem_mib=r["mem_mib"], disk_mib=r["disk_mib"], host=r["host"], state=r["state"],
        created_at=r["created_at"], expires_at=r["expires_at"], key_id=r["key_id"],
        request_id=r["request_id"], vm=r["vm"], closed_at=r["closed_at"],
        close_reason=r["close_reason"], metadata=json.loads(r["metadata"]))


__all__ = ["CLOSED", "MAX_PAGE", "OPEN", "SandboxBook", "SandboxRecord", "StateFilter",
           "not_found"]
