"""`Audit`: what the rest of tryfleet calls to record an action before doing it, and to read
the trail back.

    audit = Audit(data_dir)
    audit.record("sandbox.open", tenant="acme", actor="key:k1", request_id=rid,
                 details={"image": "base", "cpus": 1})        # durable when it returns
    seq = await audit.arecord("exec.start", ..., details=command_details(argv, env=env))

`record` raises AuditUnavailable when the record cannot be made durable: the caller then
refuses the action. One Audit per process is enough (it batches every thread's and every
task's records into shared transactions); several processes may append to one trail at once.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import query, store
from .checkpoints import AuditPaths
from .errors import AuditUnavailable
from .record import Entry, Record
from .verifier import Report, verify
from .writer import QUEUED_HOLD_S, Writer


def _close_at_exit(ref: weakref.ReferenceType[Audit]) -> None:
    audit = ref()
    if audit is not None:
        audit.close()


class Audit:
    """The audit trail of a data directory: `<data>/audit.db`, its key and its checkpoints.
    A record not on disk within wait_s (the disk hung, the file locked by another process
    past busy_timeout_s) raises AuditUnavailable."""

    def __init__(self, data_dir: Path | str, *, checkpoint_every: int = 1000,
                 checkpoint_s: float = 5.0, busy_timeout_s: float = 5.0,
                 wait_s: float = 30.0, queued_hold_s: float = QUEUED_HOLD_S) -> None:
        self.paths = AuditPaths.of(data_dir)
        self.wait_s = wait_s
        self._writer = Writer(self.paths, checkpoint_every=checkpoint_every,
                              checkpoint_s=checkpoint_s, busy_timeout_s=busy_timeout_s,
                              queued_hold_s=queued_hold_s)
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)  # the head signed at a normal exit too

    # ---- writing ---------------------------------------------------------------------------
    def record(self, action: str, *, tenant: str, actor: str, request_id: str,
               trace_id: str = "", sandbox: str = "", iteration: str = "", suite: str = "",
               host: str = "", outcome: str = "", details: Mapping[str, Any] | None = None
               ) -> int:
        """Append one record; its seq once it is on disk. AuditUnavailable when it cannot be
        (refuse the action); BadRequest/TypeError/ValueError for a malformed record."""
        entry = Entry.of(action, tenant=tenant, actor=actor, request_id=request_id,
                         trace_id=trace_id, sandbox=sandbox, iteration=iteration, suite=suite,
                         host=host, outcome=outcome, details=details)
        return self.record_many((entry,))[0]

    async def arecord(self, action: str, *, tenant: str, actor: str, request_id: str,
                      trace_id: str = "", sandbox: str = "", iteration: str = "",
                      suite: str = "", host: str = "", outcome: str = "",
                      details: Mapping[str, Any] | None = None) -> int:
        """`record` for a coroutine: waits without blocking its event loop."""
        entry = Entry.of(action, tenant=tenant, actor=actor, request_id=request_id,
                         trace_id=trace_id, sandbox=sandbox, iteration=iteration, suite=suite,
                         host=host, outcome=outcome, details=details)
        return (await self.arecord_many((entry,)))[0]

    def record_many(self, entries: Sequence[Entry]) -> list[int]:
        """Append `Entry.of(...)`s in order, in one transaction (one wait for the disk: e.g.
        a scheduler pass's state changes, or api.request with the exec.start it causes);
        their seqs once all are on disk. AuditUnavailable: refuse the action (after a
        timeout the records may still be written: as intents of an action that never was)."""
        if not entries:
            return []
        done = self._writer.submit(entries)
        try:
            return done.result(timeout=self.wait_s)
        except TimeoutError:
            done.cancel()
            raise self._late() from None

    async def arecord_many(self, entries: Sequence[Entry]) -> list[int]:
        """`record_many` for a coroutine."""
        if not entries:
            return []
        try:
            async with asyncio.timeout(self.wait_s):
                return await self._writer.submit_async(entries)
        except TimeoutError:
            raise self._late() from None

    def record_queued(self, entries: Sequence[Entry]) -> None:
        """Append them in one transaction without waiting (what nothing comes after, such as
        an API call's api.response): with the next records someone waits for, or within
        queued_hold_s (a few milliseconds); one that cannot be written is logged."""
        self._writer.submit_queued(entries)

    async def flushed(self) -> None:
        """Every record handed in before this on disk (or failed: AuditUnavailable), so that
        a read sees what was queued before it."""
        try:
            async with asyncio.timeout(self.wait_s):
                await self._writer.flushed()
        except TimeoutError:
            raise self._late() from None

    def _late(self) -> AuditUnavailable:
        return AuditUnavailable(f"audit unavailable: the audit trail {self.paths.db} did not "
                                f"answer within {self.wait_s:g} s; the action is refused")

    def close(self) -> None:
        """Append what is waiting, sign the head, close the file. Idempotent; records after
        it raise AuditUnavailable."""
        self._writer.close()
        atexit.unregister(self._at_exit)

    # ---- reading ---------------------------------------------------------------------------
    @property
    def appended(self) -> int:
        """How many records this process's writer appended since it started."""
        return self._writer.appended

    def head_seq(self) -> int:
        """The seq of the trail's last record, whoever appended it (0: none yet)."""
        db = store.open_read(self.paths.db)
        try:
            return store.head(db)[0]
        finally:
            db.close()

    def select(self, f: query.Filter) -> list[Record]:
        return query.select(self.paths.db, f)

    def trace(self, request_id: str, tenant: str | None = None) -> list[Record]:
        return query.trace(self.paths.db, request_id, tenant)

    def export(self, since: float | None = None, tenant: str | None = None
               ) -> Iterator[Record]:
        return query.export(self.paths.db, since, tenant)

    def verify(self, public_key: Path | None = None) -> Report:
        return verify(self.paths.db.parent, public_key)


__all__ = ["Audit", "AuditUnavailable"]
