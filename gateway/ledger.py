"""The gateway's reads of the ledger: iterations, suites and what ended since a cursor, read
straight from the ledger file (read-only) rather than asked of the scheduler.

Why: the gateway runs on the head beside the ledger, and SQLite's WAL lets any number of readers
read while the scheduler writes, so a listing, a get or an event stream costs an indexed query
here and nothing of the scheduler's one event loop, which is busy placing work; several gateways
read side by side. What only the scheduler knows (hosts, limits in use, live output of a running
attempt) is still asked of it. The ledger is the truth, so nothing read here can be stale
beyond the last commit.

Endings are watched by one poll of the ledger's high-water mark (MAX(end_seq), an index lookup)
per gateway, shared by every open event stream, and only while one is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from fastapi import Request

from tryfleet.errors import FleetUnavailable
from tryfleet.scheduler.ledger_reads import LedgerView

from .keys import Principal, check_tenant
from .metrics import denied
from .problems import forbidden

END_POLL_S = 0.1  # how often the high-water mark of endings is read while a stream waits


def view(request: Request) -> LedgerView:
    """The app's read-only view of the ledger, opened on first use."""
    state = request.app.state
    got: LedgerView | None = getattr(state, "ledger_view", None)
    if got is None:
        path = Path(state.ledger_path)
        try:
            if not path.exists():
                raise sqlite3.OperationalError("no such file")
            got = state.ledger_view = LedgerView(path)
        except sqlite3.Error as err:
            raise FleetUnavailable(f"the ledger {path} cannot be read yet ({err}); is the "
                                   "scheduler up?") from None
    return got


def watch(request: Request) -> EndWatch:
    """The app's watch on endings, made on first use."""
    state = request.app.state
    got: EndWatch | None = getattr(state, "end_watch", None)
    if got is None:
        got = state.end_watch = EndWatch(view(request))
    return got


def read_tenant(who: Principal, asked: str | None) -> str | None:
    """Whose things a read is about: a tenant key's own tenant (asking for another is refused);
    an admin's choice, or None for every tenant."""
    if not who.admin:
        if asked is not None and asked != who.tenant:
            denied("tenant")
            raise forbidden(f"a key of tenant {who.tenant!r} acts only for that tenant")
        return who.tenant
    return None if asked is None else check_tenant(asked)


class EndWatch:
    """Waits until something ends past a cursor, for every waiter at once from one poll."""

    def __init__(self, ledger: LedgerView, poll_s: float = END_POLL_S) -> None:
        self.ledger, self.poll_s = ledger, poll_s
        self.top = 0
        self._changed: asyncio.Condition | None = None
        self._waiting = 0
        self._poller: asyncio.Task[None] | None = None

    async def wait_past(self, cursor: int, timeout_s: float) -> None:
        """Until the ledger's last ending is past cursor, or timeout_s passed."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        self._waiting += 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            async with self._changed:
                with contextlib.suppress(TimeoutError):  # (not wait_for: see engine._loop)
                    async with asyncio.timeout(timeout_s):
                        await self._changed.wait_for(lambda: self.top > cursor)
        finally:
            self._waiting -= 1

    async def _poll(self) -> None:
        assert self._changed is not None
        while self._waiting > 0:
            top = self.ledger.top_end_seq()
            if top != self.top:
                self.top = top
                async with self._changed:
                    self._changed.notify_all()
            await asyncio.sleep(self.poll_s)


__all__ = ["END_POLL_S", "EndWatch", "read_tenant", "view", "watch"]
