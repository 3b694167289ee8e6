"""One connection to the ledger's SQLite file, shared by what keeps its tables (the ledger,
the sandbox book, the switch book): made its owner's only before SQLite opens it, WAL,
synchronous=FULL, every use serialised by one lock, writes in BEGIN IMMEDIATE transactions."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tryfleet.private import private_db


class LedgerFile:
    def __init__(self, path: Path, lock: threading.Lock | threading.RLock | None = None) -> None:
        self.path = path
        self._lock: threading.Lock | threading.RLock = \
            lock if lock is not None else threading.Lock()
        private_db(path)  # every iteration's output, every key and switch: its owner's only
        self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock: committed when the block ends, rolled back when
        it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


__all__ = ["LedgerFile"]
