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

import atexit
import functools
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import query
from .checkpoints import AuditPaths
from .errors import AuditUnavailable
from .record import Entry, Record
from .verifier import Report, verify
from .writer import Writer


def _close_at_exit(ref: weakref.ReferenceType[Audit]) -> None:
    audit = ref()
    if audit is not None:
        audit.close()


class Audit:
    """The audit trail of a data directory: `<data>/audit.db`, its key and its checkpoints."""

    def __init__(self, data_dir: Path | str, *, checkpoint_every: int = 1000,
                 checkpoint_s: float = 5.0, busy_timeout_s: float = 5.0) -> None:
        self.paths = AuditPaths.of(data_dir)
        self._writer = Writer(self.paths, checkpoint_every=checkpoint_every,
                              checkpoint_s=checkpoint_s, busy_timeout_s=busy_timeout_s)
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
        return self._writer.submit((entry,)).result()[0]

    async def arecord(self, action: str, *, tenant: str, actor: str, request_id: str,
                      trace_id: str = "", sandbox: str = "", iteration: str = "",
                      suite: str = "", host: str = "", outcome: str = "",
                      details: Mapping[str, Any] | None = None) -> int:
        """`record` for a coroutine: waits without blocking its event loop."""
        entry = Entry.of(action, tenant=tenant, actor=actor, request_id=request_id,
                         trace_id=trace_id, sandbox=sandbox, iteration=iteration, suite=suite,
                         host=host, outcome=outcome, details=details)
        return (await self._writer.submit_async((entry,)))[0]

    def record_many(self, entries: Sequence[Entry]) -> list[int]:
        """Append `Entry.of(...)`s in order, in one transaction (one wait for the disk: e.g.
        a scheduler pass's state changes, or api.request with the exec.start it causes);
        their seqs once all are on disk. AuditUnavailable: none was written."""
        return self._writer.submit(entries).result() if entries else []

    async def arecord_many(self, entries: Sequence[Entry]) -> list[int]:
        """`record_many` for a coroutine."""
        if not entries:
            return []
        return await self._writer.submit_async(entries)

    def close(self) -> None:
        """Append what is waiting, sign the head, close the file. Idempotent; records after
        it raise AuditUnavailable."""
        self._writer.close()
        atexit.unregister(self._at_exit)

    # ---- reading ---------------------------------------------------------------------------
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
