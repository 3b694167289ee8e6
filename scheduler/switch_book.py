"""Kill switches on disk: the `switches` table of the ledger (ledger_schema.SWITCHES), one row
per flip with who flipped it, when and why, and who lifted it, when and why. Nothing is
deleted: the history stays. At most one switch is in force per (level, target), which the
database itself holds to (a unique index over the rows not lifted).

The scheduler writes (before its core acts on a flip or a lift) and reads the switches in
force when it (re)starts; the gateway reads through its own connection.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tryfleet.errors import NotFound

from .ledger_file import LedgerFile
from .ledger_schema import SWITCHES, SWITCHES_IN_FORCE
from .switches import Level, Strength, Switch, switch_of


class SwitchBook(LedgerFile):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self._tx() as db:
            db.execute(SWITCHES)
            db.execute(SWITCHES_IN_FORCE)

    def flip(self, level: Level, target: str, strength: Strength, reason: str, by: str,
             now: float | None = None) -> tuple[Switch, bool]:
        """The switch in force on (level, target) after it, and whether it is a new one. The
        same strength again changes nothing; another strength replaces the one in force
        (that one is lifted, saying so)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            old = self._in_force(db, level, target)
            if old is not None and old.strength is strength:
                return old, False
            if old is not None:
                db.execute("UPDATE switches SET lifted_by = ?, lifted_at = ?, lift_reason = ? "
                           "WHERE id = ?", (by, now, f"replaced by a {strength.value}", old.id))
            cur = db.execute("INSERT INTO switches (level, target, strength, reason, "
                             "flipped_by, flipped_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (level.value, target, strength.value, reason, by, now))
            assert cur.lastrowid is not None
            return Switch(cur.lastrowid, level, target, strength, reason, by, now), True

    def lift(self, level: Level, target: str, by: str, reason: str = "",
             now: float | None = None) -> Switch:
        """The switch on (level, target), lifted; NotFound when none is in force there."""
        now = time.time() if now is None else now
        with self._tx() as db:
            old = self._in_force(db, level, target)
            if old is None:
                what = "everything" if level is Level.EVERYTHING else f"{level.value} {target}"
                raise NotFound(f"no switch is in force on {what}: nothing to lift")
            db.execute("UPDATE switches SET lifted_by = ?, lifted_at = ?, lift_reason = ? "
                       "WHERE id = ?", (by, now, reason, old.id))
        return Switch(old.id, old.level, old.target, old.strength, old.reason, old.flipped_by,
                      old.flipped_at, by, now, reason)

    @staticmethod
    def _in_force(db: sqlite3.Connection, level: Level, target: str) -> Switch | None:
        row = db.execute("SELECT * FROM switches WHERE level = ? AND target = ? AND "
                         "lifted_at IS NULL", (level.value, target)).fetchone()
        return None if row is None else switch_of(dict(row))

    def in_force(self, level: Level, target: str) -> Switch | None:
        """The switch in force on (level, target), if any: one indexed read."""
        with self._lock:
            return self._in_force(self._db, level, target)

    def active(self) -> list[Switch]:
        """The switches in force, oldest first."""
        return self._select("WHERE lifted_at IS NULL ORDER BY id")

    def history(self, limit: int = 1000) -> list[Switch]:
        """Every switch flipped, lifted ones too, newest first."""
        return self._select("ORDER BY id DESC LIMIT ?", (limit,))

    def _select(self, where: str, args: tuple[object, ...] = ()) -> list[Switch]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM switches {where}", args).fetchall()
        return [switch_of(dict(r)) for r in rows]


__all__ = ["SwitchBook"]
