"""The one thread of a process that appends to the trail: group commit, and checkpoints.

Callers of any thread (or event loop) hand it entries and wait on a future; it takes every
entry waiting, appends them in one transaction, and answers each caller with its seq once
the transaction is on disk (or with AuditUnavailable, for all of the batch). So concurrent
appends share one fsync, and an async caller never blocks its event loop.

The file is made when the writer first opens it. Afterwards a missing file is never made
again (that would start a new chain and lose the old one's place): appends are refused until
it is back. A file replaced under the same name (another inode) is opened anew.

Records nobody waits for (`submit_queued`: an api.response, an exec.end) are held back up to
queued_hold_s (QUEUED_HOLD_S) for a transaction someone waits for, and go to disk in it, before
its records: a gateway under load then commits once per request, not twice. A waited-for job
commits at once with whatever is held; `flushed` waits until everything handed in before it is
on disk.

Checkpoints: after `checkpoint_every` records, or `checkpoint_s` after the first record not
yet covered, and at close, the head is signed and appended to the checkpoints file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from . import store
from .checkpoints import AuditPaths, Signer
from .errors import AuditUnavailable
from .record import Entry

log = logging.getLogger("tryfleet.audit")
MAX_BATCH = 512  # jobs in one transaction
QUEUED_HOLD_S = 0.005  # how long records nobody waits for may wait for a transaction


Outcome = list[int] | AuditUnavailable


@dataclass(frozen=True, slots=True)
class _Job:
    """Entries appended together (one transaction), and who waits for their seqs: a thread
    (a concurrent Future), a task of an event loop (an asyncio Future of that loop), or
    nobody (None: queued, see `submit_queued`)."""

    entries: tuple[Entry, ...]
    done: Future[list[int]] | asyncio.Future[list[int]] | None
    loop: asyncio.AbstractEventLoop | None = None

    def take(self) -> bool:
        """False when the caller gave up (its task cancelled): it will not act, so its
        records are not written. Once taken, a thread's job cannot be cancelled."""
        if self.done is None:
            return True
        if isinstance(self.done, Future):
            return self.done.set_running_or_notify_cancel()
        return not self.done.cancelled()


def _settle(answers: list[tuple[asyncio.Future[list[int]], Outcome]]) -> None:
    """In the caller's event loop: each task's answer (one wake-up of the loop per batch)."""
    for fut, outcome in answers:
        if fut.done():
            continue
        if isinstance(outcome, AuditUnavailable):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


_STOP = object()


class Writer:
    def __init__(self, paths: AuditPaths, *, checkpoint_every: int = 1000,
                 checkpoint_s: float = 5.0, busy_timeout_s: float = 5.0,
                 signer: Signer | None = None, queued_hold_s: float = QUEUED_HOLD_S) -> None:
        self.paths = paths
        self.queued_hold_s = queued_hold_s
        self.checkpoint_every, self.checkpoint_s = checkpoint_every, checkpoint_s
        self.busy_timeout_s = busy_timeout_s
        self.signer = signer if signer is not None else Signer(paths)
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._db: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._opened_once = False
        self._head: tuple[int, str] | None = None  # the last head this writer committed
        self._uncovered = 0  # records of this writer since its last checkpoint
        self.appended = 0  # records this writer appended (its metrics)
        self._due: float | None = None  # monotonic time the next checkpoint is due
        self._closed = False
        self._lock = threading.Lock()
        try:
            self._connection()  # make the file and the schema now, where it can be seen
        except AuditUnavailable as err:
            log.error("%s", err)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # ---- what callers use ------------------------------------------------------------------
    def submit(self, entries: Sequence[Entry]) -> Future[list[int]]:
        """Their seqs, in order, once all are on disk (one transaction)."""
        done: Future[list[int]] = Future()
        self._put(_Job(tuple(entries), done))
        return done

    def submit_async(self, entries: Sequence[Entry]) -> asyncio.Future[list[int]]:
        """`submit` for a coroutine: a future of its own event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[int]] = loop.create_future()
        self._put(_Job(tuple(entries), done, loop))
        return done

    def submit_queued(self, entries: Sequence[Entry]) -> None:
        """Append them (one transaction) without waiting: with the next transaction someone
        waits for, or within QUEUED_HOLD_S. Not written (the trail unavailable): logged."""
        if entries:
            self._put(_Job(tuple(entries), None))

    def flushed(self) -> asyncio.Future[list[int]]:
        """Done once everything handed in before it is on disk (or failed)."""
        return self.submit_async(())

    def _put(self, job: _Job) -> None:
        with self._lock:
            if not self._closed:
                self._jobs.put(job)
                return
        self._answer([job], AuditUnavailable("audit unavailable: the audit trail is closed; "
                                             "the action is refused"))

    def close(self) -> None:
        """Append what is waiting, sign the head, close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(_STOP)
        self._thread.join()

    # ---- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        held: list[_Job] = []  # queued jobs waiting for a transaction (see the docstring)
        held_until: float | None = None
        while True:
            due = [t for t in (self._due, held_until) if t is not None]
            wait = None if not due else max(0.0, min(due) - time.monotonic())
            try:
                first = self._jobs.get(timeout=wait)
            except queue.Empty:
                now = time.monotonic()
                if held_until is not None and now >= held_until:
                    self._commit(held)
                    held, held_until = [], None
                if self._due is not None and now >= self._due:
                    self._checkpoint()
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            # A job whose caller gave up (a cancelled task) is dropped: it will not act.
            # The others cannot be cancelled from here on.
            jobs = held + [j for j in batch if isinstance(j, _Job) and j.take()]
            if (not stop and len(jobs) < MAX_BATCH and jobs
                    and all(j.done is None for j in jobs)):
                held = jobs  # nobody waits: wait a moment for a transaction someone does
                if held_until is None:
                    held_until = time.monotonic() + self.queued_hold_s
                continue
            held, held_until = [], None
            if jobs:
                self._commit(jobs)
            if stop:
                break
        self._checkpoint()
        if self._db is not None:
            self._db.close()
            self._db = None

    def _commit(self, jobs: list[_Job]) -> None:
        entries = [e for j in jobs for e in j.entries]
        if not entries:  # only `flushed`: nothing to write
            self._answer(jobs, [[] for _ in jobs])
            return
        try:
            records = store.append(self._connection(), entries, self.busy_timeout_s)
        except AuditUnavailable as err:
            self._fail(jobs, err)
            return
        except Exception as err:  # sqlite3.Error, OSError, or a bug: the thread goes on
            self._fail(jobs, store.unavailable(self.paths.db, err))
            return
        seqs = iter(r.seq for r in records)
        self._answer(jobs, [[next(seqs) for _ in job.entries] for job in jobs])
        if self._head is not None and records[0].seq <= self._head[0]:
            log.error("the audit trail's head went back from seq %d to seq %d: records were "
                      "removed behind tryfleet's back (`tryfleet audit verify` names them); "
                      "appending after it", self._head[0], records[0].seq - 1)
        self._head = (records[-1].seq, records[-1].hash)
        self.appended += len(records)
        self._uncovered += len(records)
        if self._due is None:
            self._due = time.monotonic() + self.checkpoint_s
        if self._uncovered >= self.checkpoint_every:
            self._checkpoint()

    def _fail(self, jobs: list[_Job], err: AuditUnavailable) -> None:
        log.error("%s", err)
        for job in jobs:
            if job.done is None:  # its request answered already: say what is missing
                log.error("request %s: %d records of what it did not written",
                          job.entries[0].request_id, len(job.entries))
        self._answer(jobs, err)

    @staticmethod
    def _answer(jobs: list[_Job], outcomes: list[list[int]] | AuditUnavailable) -> None:
        """Each caller its seqs, or the error: threads directly, each event loop once for
        all its tasks (every wake-up of a loop from here costs a system call, and the GIL
        back after it)."""
        loops: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[list[int]],
                                                          Outcome]]] = {}
        for n, job in enumerate(jobs):
            outcome = outcomes if isinstance(outcomes, AuditUnavailable) else outcomes[n]
            if job.done is None:
                continue
            if isinstance(job.done, Future):
                if isinstance(outcome, AuditUnavailable):
                    job.done.set_exception(outcome)
                else:
                    job.done.set_result(outcome)
            elif job.loop is not None:
                loops.setdefault(job.loop, []).append((job.done, outcome))
        for loop, answers in loops.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, answers)

    def _checkpoint(self) -> None:
        """Sign the head as this writer last committed it, if it has records not covered."""
        self._due = None
        if self._head is None or self._uncovered == 0:
            return
        seq, head_hash = self._head
        try:
            self.signer.append(self.signer.sign(seq, head_hash, time.time()))
            self._uncovered = 0
        except Exception as err:  # the records are safe; say so, and try again later
            log.error("audit checkpoint of seq %d not written: %s", seq, err)
            self._due = time.monotonic() + self.checkpoint_s

    # ---- the file --------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        path = self.paths.db
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self._opened_once:
                self._drop()
                raise AuditUnavailable(f"audit unavailable: the audit trail {path} is gone "
                                       "(removed or moved while in use); actions are refused "
                                       "until it is back") from None
            return self._open(create=True)
        except OSError as err:
            raise store.unavailable(path, err) from None
        if self._db is None or self._ident != (st.st_dev, st.st_ino):
            if self._db is not None:
                log.warning("the audit trail %s was replaced; appending to the new file", path)
            return self._open(create=False)
        return self._db

    def _open(self, create: bool) -> sqlite3.Connection:
        self._drop()
        try:
            db = store.open_write(self.paths.db, create, self.busy_timeout_s)
            st = os.stat(self.paths.db)
        except (sqlite3.Error, OSError) as err:
            raise store.unavailable(self.paths.db, err) from None
        self._db, self._ident, self._opened_once = db, (st.st_dev, st.st_ino), True
        return db

    def _drop(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db, self._ident = None, None


__all__ = ["MAX_BATCH", "QUEUED_HOLD_S", "Writer"]
