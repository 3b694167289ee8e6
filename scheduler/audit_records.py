"""The scheduler's audit records, made by its shell (engine.py) from what the core decided and
appended, one transaction per pass, before the shell performs it (the core stays pure: it
never sees the trail). When the records cannot be written the pass is not performed: the core
is rebuilt from the ledger, the hosts send their outcomes again, and the pass is tried anew.

    iteration.state    submitted, started (placed on a host), requeued, abandoned,
                       cancel_requested, and each end (SUCCEEDED, FAILED, ...)
    iteration.command  the command an attempt ran, with its exit code or signal, duration, byte
                       counts and SHA-256 of stdout and stderr (computed on its host: the wire
                       Outcome brings them back)
    sandbox.close      a sandbox the scheduler closes itself (its timeout passed, its host lost)
    sandbox.open       a sandbox granted a host, before the host opens it (sandbox_ops.py)

Each carries the tenant, the request and key that submitted the iteration (or opened the
sandbox), its trace id, iteration id, suite and host; the actor is "scheduler".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tryfleet.audit import Digest, command_details, command_outcome, command_result
from tryfleet.audit.record import Entry
from tryfleet.wire import Outcome, State

from . import events as ev
from .records import TERMINAL, Row
from .sandboxes import SandboxRecord

ACTOR = "scheduler"
RowOf = Callable[[str], Row | None]  # an iteration's row by its key (None: not known)


class Rows:
    """The rows of the iterations the shell has seen and that have not ended, by key: what
    the records of the core's actions (which name only keys) need to say."""

    def __init__(self) -> None:
        self._rows: dict[str, Row] = {}

    def saw(self, event: object) -> None:
        if isinstance(event, (ev.Submitted, ev.Recovered)):
            for row in event.rows:
                if row.state not in TERMINAL:  # (an id submitted again after it ended)
                    self._rows[row.key] = row

    def get(self, key: str) -> Row | None:
        return self._rows.get(key)

    def ended(self, actions: Iterable[object]) -> None:
        for a in actions:
            if isinstance(a, (ev.Finish, ev.Abandon)):
                self._rows.pop(a.id, None)


def _iteration(action: str, row: Row | None, key: str, host: str = "", outcome: str = "",
               details: dict[str, Any] | None = None) -> Entry:
    if row is None:  # not seen by this shell (cannot happen after a rebuild): the key alone
        tenant, _, iid = key.partition("/")
        return Entry.of(action, tenant=tenant, actor=ACTOR, request_id="", iteration=iid,
                        host=host, outcome=outcome, details=details)
    return Entry.of(action, tenant=row.tenant, actor=ACTOR, request_id=row.request_id,
                    trace_id=row.trace_id, iteration=row.id, suite=row.suite, host=host,
                    outcome=outcome, details=details)


def submitted(rows: Sequence[Row]) -> list[Entry]:
    """iteration.state submitted, of rows new to the ledger (before they are committed)."""
    return [_iteration("iteration.state", r, r.key, outcome="submitted", details={
        "state": "submitted", "image": r.iteration.image, "cpus": r.iteration.cpus,
        "mem_mib": r.iteration.mem_mib, "key_id": r.key_id}) for r in rows]


def _digest(size: int, sha256: str, data: bytes) -> Digest:
    """The host's digest; made here from the output when an older host sent none."""
    return Digest(size, sha256) if sha256 else Digest.of(data)


def commands(outcomes: Iterable[Outcome], row_of: RowOf) -> list[Entry]:
    """iteration.command for each outcome of an attempt whose command ran."""
    out = []
    for o in outcomes:
        if o.state is State.INFRA_ERROR and o.exit_code is None and o.signal is None:
            continue  # the command never ran (or nothing is known of it)
        row = row_of(o.id)
        details: dict[str, Any] = {}
        if row is not None:
            it = row.iteration
            details = command_details(it.command, cwd=it.cwd, env=it.env)
        timed_out = o.state is State.TIMED_OUT
        details.update(command_result(
            exit_code=o.exit_code, signal=o.signal, duration_s=o.duration_s,
            stdout=_digest(o.stdout_bytes, o.stdout_sha256, o.stdout),
            stderr=_digest(o.stderr_bytes, o.stderr_sha256, o.stderr), timed_out=timed_out,
            stdout_truncated=o.stdout_truncated, stderr_truncated=o.stderr_truncated,
            error=o.error or ""))
        details["attempt"] = o.attempt
        out.append(_iteration("iteration.command", row, o.id, o.host,
                              command_outcome(o.exit_code, o.signal, timed_out), details))
    return out


def of_actions(actions: Iterable[object], row_of: RowOf,
               sandbox_of: Callable[[str], SandboxRecord | None]) -> list[Entry]:
    """The records of what the core decided, in its order."""
    out: list[Entry] = []
    for a in actions:
        if isinstance(a, ev.RecordPlacements):
            out += [_iteration("iteration.state", lc.row, lc.id, lc.host, "started",
                               {"state": "started", "attempt": lc.attempt})
                    for lc in a.launches]
        elif isinstance(a, ev.Finish):
            host = a.outcome.host if a.outcome is not None else ""
            out.append(_iteration("iteration.state", row_of(a.id), a.id, host, str(a.state),
                                  {"state": str(a.state), "attempt": a.attempt,
                                   "error": a.error or "", "queued": a.queued}))
        elif isinstance(a, ev.Requeue):
            out.append(_iteration("iteration.state", row_of(a.id), a.id, "", "requeued",
                                  {"state": "requeued", "attempt": a.attempt,
                                   "error": a.error[:1000], "runs_left": a.runs_left}))
        elif isinstance(a, ev.Abandon):
            out.append(_iteration("iteration.state", row_of(a.id), a.id, "", "abandoned",
                                  {"state": "abandoned", "why": a.why[:1000]}))
        elif isinstance(a, ev.MarkCancelled):
            out += [_iteration("iteration.state", row_of(k), k, "", "cancel_requested",
                               {"state": "cancel_requested", "reason": a.reason[:1000]})
                    for k in a.ids]
        elif isinstance(a, ev.CloseSandbox):
            out.append(sandbox_closed(sandbox_of(a.lease_id), a.lease_id, a.host, a.why))
    return out


def sandbox_closed(rec: SandboxRecord | None, sid: str, host: str, why: str) -> Entry:
    return Entry.of("sandbox.close", tenant=rec.tenant if rec else "", actor=ACTOR,
                    request_id=rec.request_id if rec else "", sandbox=sid, host=host,
                    details={"reason": why[:1000]})


def sandbox_opened(rec: SandboxRecord) -> Entry:
    """sandbox.open, once a host was granted, before it opens the VM; the key that asked."""
    return Entry.of("sandbox.open", tenant=rec.tenant,
                    actor=f"key:{rec.key_id}" if rec.key_id else ACTOR,
                    request_id=rec.request_id, sandbox=rec.id, host=rec.host, details={
                        "image": rec.image, "cpus": rec.cpus, "mem_mib": rec.mem_mib,
                        "disk_mib": rec.disk_mib, "expires_at": rec.expires_at,
                        "metadata_keys": sorted(rec.metadata)})


__all__ = ["ACTOR", "Rows", "commands", "of_actions", "sandbox_closed", "sandbox_opened",
           "submitted"]
