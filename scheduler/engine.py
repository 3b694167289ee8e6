"""The scheduler's shell: a thin loop that feeds events to the pure core (core.py) and performs
the actions it returns. No Ray API of its own: service.py is the actor around it.

The ledger is the truth and the core is rebuilt from it: at start, and whenever the ledger and
the core disagree (a write refused or failed). Actions are performed in the order the core gave
them, ledger writes batched into one transaction per run of consecutive writes, so what must be
on disk first is: placements are recorded before they are started, and outcomes are committed
before the dispatcher tells their host to forget them (a failed commit raises, the outcomes are
not acknowledged, and the host sends them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tryfleet.audit.errors import AuditUnavailable
from tryfleet.secretstore import SecretStore
from tryfleet.wire import Outcome

from . import audit_records, exporter
from . import core as c
from .admission import Policy, PressureLimits
from .dispatch import Dispatcher
from .hosts import Hosts
from .ledger import Ledger
from .masked import masked_outcome
from .metrics import Metrics
from .placement import Demand
from .records import Iteration, Row, qualified
from .sandboxes import SandboxBook, SandboxRecord
from .switch_book import SwitchBook
from .switches import Level, Strength, Switch

if TYPE_CHECKING:
    from tryfleet.audit import Audit

log = logging.getLogger("tryfleet.scheduler")
HOST_REFRESH_S = 1.0
LedgerWrite = c.Finish | c.Requeue | c.Abandon | c.MarkCancelled


class LedgerDisagrees(RuntimeError):
    """The ledger refused a write the core decided: the core is rebuilt from the ledger."""


class Engine:
    def __init__(self, ledger_path: str, limits: dict[str, int] | None = None,
                 pressure: dict[str, float] | None = None, cpu_overcommit: float = 1.0,
                 suite_cap: int | None = None, tenant_cap: int | None = None,
                 audit: Audit | None = None) -> None:
        self.ledger = Ledger(Path(ledger_path))
        exporter.counters()  # this process schedules: its counters are served from now on
        self.audit = audit  # None: nothing recorded (audit_records.py says what is)
        self.rows = audit_records.Rows()
        self.hosts = Hosts(PressureLimits(**(pressure or {})), cpu_overcommit)
        # secrets live beside the ledger, in the data directory (head only)
        self.secrets = SecretStore(Path(ledger_path).parent)
        self.dispatch = Dispatcher(self.hosts, self._on_outcomes, self._on_lost,
                                   self._secret_env)
        # `limits` are defaults: a size an admin set (set_limit, kept in the ledger) wins.
        sizes = {**(limits or {}), **self.ledger.limits()}
        self.core = c.Core(Policy(limits=sizes, default_suite_cap=suite_cap,
                                  default_tenant_cap=tenant_cap), timer=time.perf_counter)
        self.tasks: set[asyncio.Task[None]] = set()
        self._metrics_base = Metrics()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.sandboxes = SandboxBook(Path(ledger_path))
        self.switches = SwitchBook(Path(ledger_path))
        self.opening: set[str] = set()  # sandboxes granted whose host is opening their VM
        self._opening_seen: set[str] | None = None  # while hosts are asked what they hold
        self._changed: asyncio.Event | None = None

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self.hosts.discover()
        await self.hosts.refresh()
        await self._rebuild()
        self._loop_task = asyncio.create_task(self._loop())

    def poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        last_refresh = 0.0
        while True:
            try:
                if time.monotonic() - last_refresh > HOST_REFRESH_S:
                    await self._refresh_hosts()
                    last_refresh = time.monotonic()
                self.feed(c.Tick(time.time()))
            except Exception:
                log.exception("scheduling pass failed; trying again")
            assert self._wake is not None
            # asyncio.timeout, not wait_for: in Python 3.11 a cancel that lands as wait_for
            # times out comes back as TimeoutError, and the loop would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HOST_REFRESH_S):
                    await self._wake.wait()
            self._wake.clear()

    async def _refresh_hosts(self) -> None:
        self.hosts.discover()
        for host in await self.hosts.refresh():
            self.feed(c.HostLost(host, f"host {host} lost"))
        self.feed(c.HostsSeen(tuple(self.hosts.views())))

    async def _rebuild(self) -> None:
        """A core made anew from the ledger: the queue, and the attempts in flight, each kept
        if its host still runs it and requeued if not."""
        old = self.core
        self.core = c.Core(old.state.policy, timer=time.perf_counter)
        self.core.metrics = old.metrics
        rows, budgets = self.ledger.recover()
        leases = tuple((r.id, lease_of(r)) for r in self.sandboxes.open_records())
        self.feed(c.HostsSeen(tuple(self.hosts.views())))
        self.feed(c.Recovered(tuple(rows), tuple(budgets), leases,
                              tuple(self.switches.active())))
        on_hosts = {w.host for w in self.core.state.work.values() if w.host is not None}
        known = await asyncio.gather(*(self.dispatch.known(h) for h in on_hosts))
        for host, here in zip(on_hosts, known, strict=True):
            self.feed(c.HostAttempts(host, None if here is None else frozenset(here)))
            self.dispatch.ensure_collector(host)
        await self._check_sandboxes()
        self.poke()

    async def _check_sandboxes(self) -> None:
        """Leases whose host no longer holds their sandbox end (a restarted node agent lost
        its VMs); one being opened meanwhile is not judged by an answer older than it."""
        hosts = sorted({lease.host for lease in self.core.state.leases.values()})
        self._opening_seen = set(self.opening)
        try:
            held = await asyncio.gather(*(self.dispatch.sandboxes(h) for h in hosts))
            spared = frozenset(self._opening_seen)
        finally:
            self._opening_seen = None
        for host, here in zip(hosts, held, strict=True):
            self.feed(c.HostSandboxes(host, None if here is None else frozenset(here) | spared))

    # ---- performing the core's actions ------------------------------------------------------
    def feed(self, event: c.Event) -> list[c.Action]:
        """Hand the core an event and perform what it decides; the actions, for the caller to
        read replies (leases) from. Raises when a ledger write failed, or the audit records
        of what it decided could not be written (then nothing of it was performed)."""
        commands = self._commands(event)
        actions = self.core.handle(event)
        try:
            self._record(commands, actions)
            self._perform(actions)
        except Exception as err:
            what = "its audit records could not be written" if isinstance(
                err, AuditUnavailable) else "the ledger and the scheduler disagree"
            log.error("a scheduling pass was not performed: %s (%s); rebuilding from the "
                      "ledger", what, err)
            self._spawn(self._rebuild())
            raise
        finally:
            if not isinstance(event, c.LeaseOpened):
                self._room_may_have_changed()
        return actions

    def _commands(self, event: c.Event) -> list[Any]:
        """The audit records of the commands an event reports (before the core forgets
        their rows)."""
        if self.audit is None:
            return []
        self.rows.saw(event)
        if isinstance(event, c.OutcomesCollected):
            return audit_records.commands(event.outcomes, self.rows.get)
        return []

    def _record(self, commands: list[Any], actions: Sequence[c.Action]) -> None:
        """The pass's records, in one transaction, before any of it is performed;
        AuditUnavailable (raised) leaves it unperformed: the core is rebuilt."""
        if self.audit is None:
            return
        entries = commands + audit_records.of_actions(actions, self.rows.get,
                                                      self._sandbox_record)
        self.audit.record_many(entries)
        self.rows.ended(actions)

    def _sandbox_record(self, sid: str) -> SandboxRecord | None:
        try:
            return self.sandboxes.get(sid)
        except LookupError:
            return None

    def _perform(self, actions: Sequence[c.Action]) -> None:
        writes: list[LedgerWrite] = []
        for a in actions:
            if isinstance(a, (c.Finish, c.Requeue, c.Abandon, c.MarkCancelled)):
                writes.append(a)
                continue
            self._commit(writes)
            writes = []
            if isinstance(a, c.RecordPlacements):
                done = self.ledger.launch(a.launches)
                if not all(done):
                    refused = [lc.id for lc, ok in zip(a.launches, done, strict=True) if not ok]
                    raise LedgerDisagrees(f"placements of {refused[:5]} refused")
                exporter.started(len(a.launches))
            elif isinstance(a, c.StartOnHost):
                if log.isEnabledFor(logging.DEBUG):  # its ids are not made for nothing
                    for lc in a.launches:
                        log.debug("attempt %d of %s started on %s", lc.attempt, lc.row.id,
                                  a.host, extra=row_ids(lc.row, lc.attempt, a.host))
                self.dispatch.start(a.host, a.launches)
            elif isinstance(a, c.StopOnHost):  # settled: ended here, stopped there regardless
                self._spawn(self.dispatch.cancel(a.host, a.attempts, _always if a.settled
                                                 else self.core.state.flying))
            elif isinstance(a, c.StopEverywhere):
                self._spawn(self.dispatch.cancel_all())
            elif isinstance(a, c.CloseSandbox):
                log.info("closing sandbox %s on %s: %s", a.lease_id, a.host, a.why,
                         extra={"sandbox": a.lease_id, "host": a.host})
                self.sandboxes.close_record(a.lease_id, a.why)
                self._spawn(self.dispatch.close_sandbox(a.host, a.lease_id))
        self._commit(writes)

    def _commit(self, writes: list[LedgerWrite]) -> None:
        if not writes:
            return
        for a in writes:
            if isinstance(a, c.Requeue):
                w = self.core.state.work.get(a.id)
                log.warning("retrying %s after attempt %d: %s", a.id, a.attempt, a.error,
                            extra={} if w is None else row_ids(w.row, a.attempt, None))
        self.ledger.commit(writes)  # a write that no longer applies was fenced: harmless
        exporter.counted(writes)
        self.poke()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_outcomes(self, host: str, outcomes: list[Outcome]) -> None:
        if log.isEnabledFor(logging.INFO):  # one line per attempt that ended, with its ids
            for o in outcomes:
                if (w := self.core.state.work.get(o.id)) is not None:
                    log.info("attempt %d of %s ended %s on %s", o.attempt, w.row.id,
                             o.state.value, host, extra={
                                 **row_ids(w.row, o.attempt, host), "state": o.state.value,
                                 "exit_code": o.exit_code, "duration_s": o.duration_s})
        self.feed(c.OutcomesCollected(host, tuple(masked_outcome(o, self.secrets)
                                                  for o in outcomes)))

    def _secret_env(self, tenant: str, names: Sequence[str]) -> list[tuple[str, str]]:
        """The values of the secrets an attempt names; one removed since it was submitted is
        left out (the command sees it unset), with a warning."""
        have = {s.name for s in self.secrets.list(tenant)}
        gone = [n for n in names if n not in have]
        if gone:
            log.warning("secrets %s of tenant %s were removed: an attempt starts without "
                        "them", ", ".join(gone), tenant)
        return list(self.secrets.values(tenant, [n for n in names if n in have]).items())

    def _on_lost(self, host: str, why: str) -> None:
        self.feed(c.HostLost(host, why))

    # ---- what the API asks -----------------------------------------------------------------
    def submit(self, its: list[Iteration], suite: str, tenant: str,
               max_iterations: int | None = None, max_wall_s: float | None = None,
               request_id: str = "", key_id: str = "") -> list[str]:
        """Record the tenant's iterations and queue them; their ids (the tenant's own). The
        limits they name are held while they run; their sizes are set_limit's business."""
        self._check_switches(its, suite, tenant, key_id)
        self.core.check_fits(its)
        audit = self.audit
        rows = self.ledger.submit_rows(
            its, suite, tenant, request_id=request_id, key_id=key_id,
            max_iterations=max_iterations, max_wall_s=max_wall_s,
            before_commit=None if audit is None else
            lambda new: audit.record_many(audit_records.submitted(new)))
        created_at, wall = self.ledger.suite_budget(suite, tenant)
        self.feed(c.Submitted(tuple(rows), qualified(tenant, suite), created_at, wall))
        self.poke()
        return [r.id for r in rows]

    def _check_switches(self, its: list[Iteration], suite: str, tenant: str,
                        key_id: str) -> None:
        """Frozen when a kill switch covers the submission (its tenant, suite, key, one of its
        iteration ids, or everything): nothing of it is recorded."""
        over = self.core.state.switches.over_work
        for it in its:
            sw = over(tenant, qualified(tenant, suite), qualified(tenant, it.id or ""), key_id)
            if sw is not None:
                raise sw.refusal(f"submitting to suite {suite!r} of tenant {tenant!r}")

    # ---- kill switches (on disk first, then the core acts) ----------------------------------
    def flip(self, level: Level, target: str, strength: Strength, reason: str,
             by: str) -> tuple[Switch, bool, list[c.Action]]:
        """The switch in force after it, whether it is new, and what the core did (a kill's
        stops)."""
        switch, new = self.switches.flip(level, target, strength, reason, by)
        actions = self.feed(c.SwitchOn(switch)) if new else []
        self.poke()
        return switch, new, actions

    def lift(self, level: Level, target: str, by: str, reason: str = "") -> Switch:
        switch = self.switches.lift(level, target, by, reason)
        self.feed(c.SwitchOff(level, target))
        self.poke()
        return switch

    def set_limit(self, name: str, value: int | None, by: str = "") -> dict[str, int]:
        """Size a fleet-wide shared-resource limit (None: unlimited), on disk first; the
        limits in force after it."""
        self.ledger.set_limit(name, value, by)
        policy = self.core.state.policy
        sizes = {k: v for k, v in policy.limits.items() if k != name}
        if value is not None:
            sizes[name] = value
        self.core.state.policy = replace(policy, limits=sizes)
        self.poke()
        return dict(sizes)

    def cancel(self, scope: c.Scope, name: str = "") -> dict[str, int]:
        """Cancel by scope; name is an iteration key, a suite key or a tenant."""
        actions = self.feed(c.CancelRequested(scope, name))
        return {"queued_cancelled": sum(1 for a in actions if isinstance(a, c.Finish)),
                "running_stopped": sum(len(a.attempts) for a in actions
                                       if isinstance(a, c.StopOnHost))}

    def lease(self, lease_id: str, demand: Demand, timeout_s: float, tenant: str = "",
              quota: c.Quota | None = None, key_id: str = ""
              ) -> c.LeaseGranted | c.LeaseRefused | c.LeaseOverQuota | c.LeaseFrozen:
        """Hold capacity for an interactive sandbox: placed like an iteration, not queued."""
        (reply,) = self.feed(c.LeaseOpened(lease_id, demand, time.time() + timeout_s, tenant,
                                           quota or c.Quota(), key_id))
        assert isinstance(reply, (c.LeaseGranted, c.LeaseRefused, c.LeaseOverQuota,
                                  c.LeaseFrozen))
        return reply

    def extend(self, lease_id: str, expires_at: float) -> None:
        self.feed(c.LeaseExtended(lease_id, expires_at))

    def mark_opening(self, sid: str) -> None:
        self.opening.add(sid)
        if self._opening_seen is not None:
            self._opening_seen.add(sid)

    def _room_may_have_changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def room_changed(self, timeout_s: float) -> None:
        """Until something happened that may free capacity (or timeout_s passed)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()

    def release(self, lease_id: str) -> None:
        self.feed(c.LeaseClosed(lease_id))
        self.poke()

    def stats(self, reset: bool = False) -> dict[str, Any]:
        m = self.core.metrics
        out = m.summary(self.ledger.commits, self.dispatch.calls, self.dispatch.collected)
        if reset:
            self.core.metrics = Metrics(commits_at=self.ledger.commits,
                                        calls_at=dict(self.dispatch.calls),
                                        collected_at=self.dispatch.collected)
        return out

    @property
    def in_flight(self) -> int:
        return sum(1 for w in self.core.state.work.values() if w.host is not None)

    @property
    def policy(self) -> Policy:
        return self.core.state.policy


def row_ids(row: Row, attempt: int, host: str | None) -> dict[str, Any]:
    """The ids of an attempt for its log lines: the tenant's own suite and iteration names."""
    return {"tenant": row.tenant, "key": row.key_id or None, "suite": row.suite,
            "iteration": row.id, "attempt": attempt, "host": host,
            "request_id": row.request_id or None, "trace_id": row.trace_id or None}


def lease_of(r: SandboxRecord) -> c.Lease:
    return c.Lease(r.host, Demand(r.cpus, r.mem_mib, r.disk_mib or c.DEFAULT_DISK_MIB, r.image),
                   r.expires_at, r.tenant, r.key_id)


def _always(iid: str, attempt: int) -> bool:
    return True
