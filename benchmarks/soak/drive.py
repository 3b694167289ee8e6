"""Driving a soak run: submit in chunks as the work progresses, let the chaos thread kill, watch
the ledger until everything ended (or the grace after the last kill ran out), and kill the
scheduler's process on request. Everything here retries through a scheduler restart."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chaos import Chaos
from .checks import connect_ro, not_terminal, terminal_count

SUITE = "soak"
TENANT = "bench"
POLL_S = 0.05
RETRY_PAUSE_S = 0.1
CALL_TIMEOUT_S = 30.0


def call(method: Any, *args: Any, within_s: float = 120.0,
         on_retry: Callable[[BaseException], None] | None = None) -> Any:
    """method.remote(*args), again until it answers while its actor is down or restarting
    (RayActorError, ActorUnavailableError) or slow to answer; raises after within_s."""
    import ray

    give_up = time.monotonic() + within_s
    while True:
        try:
            return ray.get(method.remote(*args), timeout=CALL_TIMEOUT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
            if time.monotonic() > give_up:
                raise
            if on_retry is not None:
                on_retry(err)
            time.sleep(RETRY_PAUSE_S)


def kill_scheduler(sched: Any, submitting: threading.Event | None = None) -> dict[str, Any]:
    """SIGKILL the scheduler actor's process, then wait until Ray restarted it and it answers
    again (its ping returns once the restarted engine has reconciled with the ledger)."""
    pid = call(sched.ping)["pid"]
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    during_submit = submitting is not None and submitting.is_set()
    while (new := call(sched.ping)["pid"]) == pid:  # a call that slipped in before it died
        time.sleep(RETRY_PAUSE_S)
    return {"pid": pid, "new_pid": new, "killed_at": killed_at,
            "recover_s": round(time.time() - killed_at, 3), "during_submit": during_submit}


class Progress:
    """Terminal iterations in the ledger, from any thread (one read-only connection)."""

    def __init__(self, ledger: Path) -> None:
        self._db = connect_ro(ledger)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return terminal_count(self._db)

    def close(self) -> None:
        self._db.close()


@dataclass
class Timeline:
    t0: float
    submitted: list[str] = field(default_factory=list)
    submit_calls: int = 0
    submit_retries: int = 0  # calls again after the scheduler died or was restarting
    all_submitted_at: float | None = None
    ended_by: str = ""
    end_at: float = 0.0
    stuck: list[str] = field(default_factory=list)  # not terminal when the run ended


def keep_ledger(ledger: Path) -> Path:
    """A copy of the run's ledger where it outlives the run (a failed soak's evidence)."""
    from ..common import scratch_dir

    with closing(connect_ro(ledger)) as db:
        dest = scratch_dir() / f"soak-ledger-{time.strftime('%Y%m%d-%H%M%S')}.db"
        with closing(sqlite3.connect(dest)) as out:
            db.backup(out)
    return dest


def chunks_of(work: Sequence[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    size = -(-len(work) // max(1, n))
    return [list(work[i:i + size]) for i in range(0, len(work), size)]


def due(chunk: int, lead: int, chunk_len: int) -> int:
    """Progress (terminal iterations) at which chunk number `chunk` is submitted: `lead`
    chunks stay submitted ahead of the work done, so work is always queued."""
    return max(0, (chunk - lead) * chunk_len)


def drive(sched: Any, ledger: Path, chunks: list[list[dict[str, Any]]], lead: int,
          chaos: Chaos, grace_s: float, deadline_s: float,
          submitting: threading.Event | None = None) -> Timeline:
    """Submit, let chaos run, and wait until every submitted iteration is terminal. Give up
    once no iteration ended for grace_s after the last chaos event (so at least grace_s after
    the last kill), or for twice that while chaos still runs, or at the deadline; what is not
    terminal then is stuck."""
    progress = Progress(ledger)
    tl = Timeline(t0=time.time())
    total = sum(len(c) for c in chunks)
    deadline = time.monotonic() + deadline_s
    nxt, last_done, last_move = 0, -1, time.time()
    try:
        with chaos:
            while True:
                done = progress()
                while nxt < len(chunks) and done >= due(nxt, lead, len(chunks[0])):
                    tl.submitted += _submit(sched, chunks[nxt], tl, submitting)
                    nxt += 1
                    if nxt == len(chunks):
                        tl.all_submitted_at = time.time()
                if done != last_done:
                    last_done, last_move = done, time.time()
                why = _why_stop(nxt == len(chunks) and done >= total, chaos, grace_s,
                                last_move, time.monotonic() > deadline)
                if why:
                    tl.ended_by = why
                    break
                time.sleep(POLL_S)
    finally:
        progress.close()
    tl.end_at = time.time()
    with closing(connect_ro(ledger)) as db:
        tl.stuck = not_terminal(db, tl.submitted)
    return tl


def _submit(sched: Any, chunk: list[dict[str, Any]], tl: Timeline,
            submitting: threading.Event | None) -> list[str]:
    def again(err: BaseException) -> None:
        tl.submit_retries += 1

    if submitting is not None:
        submitting.set()
    try:
        ids: list[str] = call(sched.submit, chunk, SUITE, TENANT, on_retry=again)
    finally:
        if submitting is not None:
            submitting.clear()
    tl.submit_calls += 1
    return ids


def _why_stop(all_ended: bool, chaos: Chaos, grace_s: float, last_move: float,
              past_deadline: bool, now: float | None = None) -> str:
    now = time.time() if now is None else now
    if all_ended and chaos.finished:
        return "every iteration ended"
    last = chaos.last_at
    if chaos.finished and last is not None and now > max(last, last_move) + grace_s:
        return f"nothing ended for {grace_s:g} s after the last chaos event"
    if now > last_move + 2 * grace_s:
        return f"nothing ended for {2 * grace_s:g} s while chaos went on"
    if past_deadline:
        return "the run's deadline"
    return ""
