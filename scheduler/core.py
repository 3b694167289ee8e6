"""The scheduler's decisions as a pure state machine: events in, actions out. Pure: no Ray,
SQLite, threads, clocks or sleeps; the time comes in with the events.

    core = Core(policy)
    actions = core.handle(Submitted(rows))          # -> []
    actions = core.handle(HostsSeen(views))         # -> []
    actions = core.handle(Tick(now))                # -> [RecordPlacements, StartOnHost, ...]

The shell (engine.py) performs the actions in order: what must be on disk first comes first
(placements are recorded before they are started; outcomes are committed before a host is told
to forget them). `Core.state` is the one state object: every iteration that has not ended, each
in exactly one place (queued in the backlog, or in flight on a host), with the reservations and
usage derived from it by one transition function rather than maps kept in step by hand.

Retries are a pure function of an outcome and the iteration's budget (`retry_policy`).

The core knows an iteration by its key (`Row.key`, unique across tenants: the ledger's
tenant/id) and a suite by its suite key (`Row.suite_key`): every id in its events and actions is
a key, so two tenants' "t1" or suite "fix-1" never meet here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from tryfleet.errors import CannotPlace
from tryfleet.wire import Failure, Outcome
from tryfleet.wire import State as Ended

from .admission import Candidate, Policy, Usage, admit
from .backlog import Backlog
from .events import (
    Abandon,
    Action,
    CancelRequested,
    CloseSandbox,
    Event,
    Finish,
    HostAttempts,
    HostLost,
    HostSandboxes,
    HostsSeen,
    Launch,
    Lease,
    LeaseClosed,
    LeaseExtended,
    LeaseFrozen,
    LeaseGranted,
    LeaseOpened,
    LeaseOverQuota,
    LeaseRefused,
    MarkCancelled,
    OutcomesCollected,
    Quota,
    RecordPlacements,
    Recovered,
    Requeue,
    Scope,
    StartOnHost,
    StopEverywhere,
    StopOnHost,
    Submitted,
    SwitchOff,
    SwitchOn,
    Tick,
)
from .metrics import Metrics
from .placement import Demand, HostView, Reservations, Verdict, place
from .records import Iteration, Row
from .retry import Budget, Retry, retry_policy
from .switches import Switches
from .switching import Switching

DEFAULT_DISK_MIB = 1024


def demand_of(it: Iteration) -> Demand:
    return Demand(it.cpus, it.mem_mib, it.disk_mib or DEFAULT_DISK_MIB, it.image)


# ---- the state -------------------------------------------------------------------------------
@dataclass(slots=True)
class Work:
    """One iteration that has not ended: queued (host None) or in flight on `host`."""

    row: Row
    cand: Candidate
    attempt: int
    runs_left: int
    infra_tries: int
    host: str | None = None
    cancel: bool = False
    avoid: set[str] = field(default_factory=set)  # hosts where an attempt failed

    @property
    def budget(self) -> Budget:
        return Budget(self.runs_left, self.infra_tries, self.row.max_attempts, self.cancel)


@dataclass
class SchedulerState:
    work: dict[str, Work] = field(default_factory=dict)
    backlog: Backlog = field(default_factory=Backlog)  # the queued ones, in admission order
    reservations: Reservations = field(default_factory=Reservations)  # in flight, and leases
    usage: Usage = field(default_factory=Usage)  # in flight, by suite, tenant and limit
    hosts: dict[str, HostView] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    budgets: dict[str, tuple[float, float]] = field(default_factory=dict)  # suite key -> wall
    policy: Policy = field(default_factory=Policy)
    switches: Switches = field(default_factory=Switches)  # the kill switches in force
    held: set[str] = field(default_factory=set)  # queued, out of the backlog under a switch

    def flying(self, iid: str, attempt: int) -> bool:
        w = self.work.get(iid)
        return w is not None and w.host is not None and w.attempt == attempt

    def on_host(self, host: str) -> list[Work]:
        return [w for w in self.work.values() if w.host == host]


def candidate(row: Row) -> Candidate:
    return Candidate(row.key, row.suite_key, row.tenant, row.priority, row.seq, row.limits,
                     demand_of(row.iteration))


class Core(Switching):
    def __init__(self, policy: Policy | None = None,
                 timer: Callable[[], float] | None = None) -> None:
        self.state = SchedulerState(policy=policy or Policy())
        self.metrics = Metrics()
        self._timer = timer  # only to time placement decisions and passes for the metrics

    # ---- transitions: the one place that moves work between queued, flying and ended ------
    def _queue(self, w: Work) -> None:
        w.host = None
        self.state.work[w.row.key] = w
        self._hold_or_queue(w)

    def _fly(self, w: Work, host: str, attempt: int) -> None:
        s = self.state
        s.backlog.discard(w.row.key)
        s.held.discard(w.row.key)
        w.host, w.attempt = host, attempt
        s.reservations.reserve(w.row.key, host, w.cand.demand)  # idempotent: placement's own
        s.usage.add(w.cand)

    def _land(self, w: Work) -> None:
        """w is no longer in flight (it ended, or goes back to the queue)."""
        if w.host is not None:
            self.state.reservations.unreserve(w.row.key)
            self.state.usage.remove(w.cand)
            w.host = None

    def _end(self, w: Work) -> None:
        self._land(w)
        self.state.backlog.discard(w.row.key)
        self.state.held.discard(w.row.key)
        del self.state.work[w.row.key]

    # ---- events ----------------------------------------------------------------------------
    def handle(self, event: Event) -> list[Action]:
        match event:
            case Submitted():
                return self._submitted(event)
            case Recovered():
                return self._recovered(event)
            case HostsSeen():
                self.state.hosts = {v.name: v for v in event.views}
                return []
            case HostAttempts():
                return self._host_attempts(event)
            case OutcomesCollected():
                return self._outcomes(event)
            case HostLost():
                return self._host_lost(event)
            case CancelRequested():
                return self._cancel(event)
            case LeaseOpened():
                return self._lease(event)
            case LeaseExtended():
                lease = self.state.leases.get(event.lease_id)
                if lease is not None:
                    lease.expires_at = event.expires_at
                return []
            case LeaseClosed():
                if self.state.leases.pop(event.lease_id, None) is not None:
                    self.state.reservations.unreserve(event.lease_id)
                return []
            case HostSandboxes():
                return self._host_sandboxes(event)
            case SwitchOn():
                return self._switch_on(event)
            case SwitchOff():
                return self._switch_off(event)
            case Tick():
                return [*self._expire(event.now), *self._pass()]
        raise TypeError(f"not a scheduler event: {event!r}")

    def _submitted(self, ev: Submitted) -> list[Action]:
        if ev.max_wall_s is not None and ev.suite:
            self.state.budgets[ev.suite] = (ev.created_at, ev.max_wall_s)
        for row in ev.rows:
            if row.state == "QUEUED" and not row.cancel_requested \
                    and row.key not in self.state.work:
                self._queue(self._work(row))
        return []

    def _work(self, row: Row) -> Work:
        return Work(row, candidate(row), row.attempt, row.runs_left, row.infra_tries,
                    cancel=row.cancel_requested)

    def _recovered(self, ev: Recovered) -> list[Action]:
        for sw in ev.switches:
            self.state.switches.add(sw)
        for name, created_at, max_wall_s in ev.suites:
            self.state.budgets[name] = (created_at, max_wall_s)
        actions: list[Action] = []
        for lease_id, lease in ev.leases:
            if lease.host not in self.state.hosts:
                actions.append(CloseSandbox(lease_id, lease.host,
                                            f"its host {lease.host} is gone"))
            elif self.state.reservations.reserve(lease_id, lease.host, lease.demand):
                self.state.leases[lease_id] = lease
        for row in ev.rows:
            if row.key in self.state.work:
                continue
            w = self._work(row)
            if row.state == "QUEUED":
                if row.cancel_requested:
                    actions.append(Finish(row.key, row.attempt, Ended.CANCELLED,
                                          "cancelled by request", queued=True))
                else:
                    self._queue(w)
            else:  # in flight when the scheduler stopped: held until its host is asked
                self.state.work[row.key] = w
                self._fly(w, row.host or "", row.attempt)
        for sw in self.state.switches:  # a kill holds across restarts: again, on what is left
            if sw.killing:
                actions += self._kill(sw)
        return actions

    def _host_attempts(self, ev: HostAttempts) -> list[Action]:
        """Flights the host does not know were lost with a restart of its node agent."""
        if ev.known is None:
            return self._host_lost(HostLost(ev.host, f"host {ev.host} gone after a restart"))
        lost = [w for w in self.state.on_host(ev.host)
                if (w.row.key, w.attempt) not in ev.known]
        return self._settle([(w, Ended.INFRA_ERROR, Failure.LOST,
                              f"attempt {w.attempt} of {w.row.id} is unknown on {ev.host} "
                              "(its node agent restarted?)", None) for w in lost])

    def _outcomes(self, ev: OutcomesCollected) -> list[Action]:
        todo = []
        for o in ev.outcomes:
            w = self.state.work.get(o.id)
            if w is not None and w.host is not None and w.attempt == o.attempt:
                todo.append((w, o.state, o.failure, o.error, o))
        return self._settle(todo)

    def _host_lost(self, ev: HostLost) -> list[Action]:
        actions = self._settle([(w, Ended.INFRA_ERROR, Failure.HOST_LOST, ev.why, None)
                                for w in self.state.on_host(ev.host)])
        for lease_id, lease in list(self.state.leases.items()):
            if lease.host == ev.host:
                del self.state.leases[lease_id]
                self.state.reservations.unreserve(lease_id)
                actions.append(CloseSandbox(lease_id, ev.host, ev.why))
        self.state.hosts.pop(ev.host, None)
        return actions

    def _settle(self, todo: Iterable[tuple[Work, Ended, Failure | None, str | None,
                                           Outcome | None]]) -> list[Action]:
        actions: list[Action] = []
        for w, state, failure, error, outcome in todo:
            if not self.state.flying(w.row.key, w.attempt):
                continue  # settled already by an earlier item of the same batch
            verdict = retry_policy(state, failure, w.budget)
            host = w.host or ""
            self._land(w)
            if isinstance(verdict, Retry):
                if state is not Ended.FAILED:
                    w.avoid.add(host)
                w.runs_left, w.infra_tries = verdict.runs_left, verdict.infra_tries
                actions.append(Requeue(w.row.key, w.attempt, error or state.value,
                                       w.runs_left, w.infra_tries))
                self._queue(w)
            else:
                if verdict is Ended.CANCELLED and state is not Ended.CANCELLED:
                    error = "cancelled by request"
                actions.append(Finish(w.row.key, w.attempt, verdict, error, outcome))
                self._end(w)
        return actions

    # ---- cancel ----------------------------------------------------------------------------
    def _matches(self, ev: CancelRequested) -> list[Work]:
        work = self.state.work
        if ev.scope is Scope.ITERATION:
            return [work[ev.name]] if ev.name in work else []
        if ev.scope is Scope.SUITE:
            return [w for w in work.values() if w.row.suite_key == ev.name]
        if ev.scope is Scope.TENANT:
            return [w for w in work.values() if w.row.tenant == ev.name]
        return list(work.values())

    def _cancel(self, ev: CancelRequested) -> list[Action]:
        actions = self._stop_work(self._matches(ev), ev.reason)
        if ev.scope is Scope.EVERYTHING:
            actions.append(StopEverywhere())
        return actions

    # ---- leases (interactive sandboxes) ----------------------------------------------------
    def _lease(self, ev: LeaseOpened) -> list[Action]:
        s = self.state
        if ev.lease_id in s.leases:
            return [LeaseGranted(ev.lease_id, s.leases[ev.lease_id].host)]
        switch = s.switches.over_sandbox(ev.tenant, ev.key_id)
        if switch is not None:
            return [LeaseFrozen(ev.lease_id, switch)]
        over = self._over_quota(ev)
        if over is not None:
            return [over]
        if not s.hosts:  # none has reported yet (a start): not "never"
            return [LeaseRefused(ev.lease_id, False, "no hosts in the fleet yet")]
        decision = place(ev.demand, list(self._views().values()))
        if decision.verdict is Verdict.PLACED and decision.host is not None:
            s.reservations.reserve(ev.lease_id, decision.host, ev.demand)
            s.leases[ev.lease_id] = Lease(decision.host, ev.demand, ev.expires_at, ev.tenant,
                                          ev.key_id)
            return [LeaseGranted(ev.lease_id, decision.host)]
        return [LeaseRefused(ev.lease_id, decision.verdict is Verdict.NEVER, decision.explain())]

    def _over_quota(self, ev: LeaseOpened) -> LeaseOverQuota | None:
        """The first of the tenant's limits this lease would pass, counting what it holds
        now: its open sandboxes and its iterations in flight."""
        q = ev.quota
        if q == Quota():
            return None
        s = self.state
        held = [lease.demand for lease in s.leases.values() if lease.tenant == ev.tenant]
        boxes = len(held) + 1
        held += [w.cand.demand for w in s.work.values()
                 if w.host is not None and w.row.tenant == ev.tenant]
        cpus = ev.demand.cpus + sum(d.cpus for d in held)
        mem = ev.demand.mem_mib + sum(d.mem_mib for d in held)
        for limit, most, asked, unit in (("max_sandboxes", q.max_sandboxes, boxes, "sandboxes"),
                                         ("max_vcpus_in_use", q.max_vcpus_in_use, cpus, "vCPUs"),
                                         ("max_mem_mib_in_use", q.max_mem_mib_in_use, mem,
                                          "MiB of memory")):
            if most is not None and asked > most:
                return LeaseOverQuota(ev.lease_id, limit, most, (
                    f"tenant {ev.tenant!r} would hold {asked} {unit} at once (open sandboxes "
                    f"and running iterations); its {limit} is {most}"))
        return None

    def _host_sandboxes(self, ev: HostSandboxes) -> list[Action]:
        """Leases whose sandbox the host does not hold (its node agent restarted) end."""
        if ev.known is None:
            return []
        actions: list[Action] = []
        for lease_id, lease in list(self.state.leases.items()):
            if lease.host == ev.host and lease_id not in ev.known:
                del self.state.leases[lease_id]
                self.state.reservations.unreserve(lease_id)
                actions.append(CloseSandbox(lease_id, ev.host, f"it is no longer open on "
                                            f"{ev.host} (its node agent restarted?)"))
        return actions

    def _expire(self, now: float) -> list[Action]:
        s = self.state
        actions: list[Action] = []
        for lease_id, lease in list(s.leases.items()):
            if lease.expires_at <= now:
                del s.leases[lease_id]
                s.reservations.unreserve(lease_id)
                actions.append(CloseSandbox(lease_id, lease.host, "its timeout passed"))
        live_suites = {w.row.suite_key for w in s.work.values()}
        for suite, (created_at, max_wall_s) in list(s.budgets.items()):
            if suite not in live_suites:
                del s.budgets[suite]
            elif created_at + max_wall_s < now:
                del s.budgets[suite]
                actions += self._cancel(CancelRequested(
                    Scope.SUITE, suite, f"suite wall-time budget of {max_wall_s:g}s used up"))
        s.usage.prune(s.backlog.suites())
        return actions

    # ---- the scheduling pass ---------------------------------------------------------------
    def _pass(self) -> list[Action]:
        """Admit and place from the head of the backlog; every placement recorded in one
        action, each host's starts in one action."""
        s = self.state
        if not s.backlog:
            return []
        views = self._views()
        # Every iteration takes at least one cpu: no more can start in this pass than there
        # are free cpus, so admission looks at no more than that from each suite.
        room = sum(max(0, v.cpus - v.used_cpus) for v in views.values()
                   if v.healthy and not v.pressured and not v.draining)
        if room <= 0:
            return []
        t_pass = self._timer() if self._timer else 0.0
        placed: dict[str, str] = {}
        never: dict[str, str] = {}

        def try_place(c: Candidate) -> bool:
            t0 = self._timer() if self._timer else 0.0
            avoid = s.work[c.id].avoid
            # Retries prefer other hosts than the ones that failed, but do not need them.
            usable = [v for n, v in views.items() if n not in avoid] if avoid \
                else views.values()
            decision = place(c.demand, usable)
            if decision.verdict is not Verdict.PLACED and avoid:
                decision = place(c.demand, views.values())
            if decision.verdict is Verdict.PLACED and decision.host is not None:
                placed[c.id] = decision.host
                s.reservations.reserve(c.id, decision.host, c.demand)
                views[decision.host] = replace(s.reservations.apply(s.hosts[decision.host]),
                                               draining=False)  # a drained host is never chosen
            elif decision.verdict is Verdict.NEVER:
                never[c.id] = decision.explain()
            if self._timer:
                self.metrics.placed(self._timer() - t0)
            return c.id in placed

        # admit() counts what it admits in usage as it goes (caps and fair share need it);
        # _fly counts it again, so admission works on a copy.
        admitted = admit(s.backlog.heads(room), _copy(s.usage), s.policy, try_place)
        actions: list[Action] = []
        for iid, why in never.items():
            actions.append(Abandon(iid, f"cannot be placed: {why}"))
            self._end(s.work[iid])
        launches = []
        for c in admitted:
            w = s.work[c.id]
            self._fly(w, placed[c.id], w.attempt + 1)
            launches.append(Launch(c.id, w.attempt, placed[c.id], w.row))
        if launches:
            actions.append(RecordPlacements(tuple(launches)))
            by_host: dict[str, list[Launch]] = defaultdict(list)
            for launch in launches:
                by_host[launch.host].append(launch)
            actions += [StartOnHost(h, tuple(ls)) for h, ls in by_host.items()]
        self.metrics.passes += 1
        if self._timer:
            self.metrics.pass_s += self._timer() - t_pass
        return actions

    # ---- queries ---------------------------------------------------------------------------
    def check_fits(self, its: Sequence[Iteration]) -> None:
        """CannotPlace when no host, even empty and well, could ever take one of them."""
        empty = [replace(v, used_cpus=0, used_mem_mib=0, used_disk_mib=0, pressured=False)
                 for v in self.state.hosts.values()]
        if not empty:
            return
        seen: dict[Demand, str | None] = {}
        for n, it in enumerate(its):
            demand = demand_of(it)
            if demand not in seen:
                decision = place(demand, empty)
                seen[demand] = decision.explain() if decision.verdict is Verdict.NEVER else None
            why = seen[demand]
            if why is not None:
                raise CannotPlace(f"iteration {n + 1} ({it.id or 'no id'}) can never run on "
                                  f"this fleet: {why}", why)


def _copy(usage: Usage) -> Usage:
    out = Usage()
    out.suites.update(usage.suites)
    out.tenants.update(usage.tenants)
    out.limits.update(usage.limits)
    out.started.update(usage.started)
    return out


__all__ = [
    "Abandon", "Action", "Budget", "CancelRequested", "CloseSandbox", "Core", "Event",
    "Finish", "HostAttempts", "HostLost", "HostSandboxes", "HostsSeen", "Launch", "Lease",
    "LeaseClosed", "LeaseExtended", "LeaseFrozen", "LeaseGranted", "LeaseOpened", "LeaseOverQuota",
    "LeaseRefused", "MarkCancelled", "OutcomesCollected", "Quota", "RecordPlacements",
    "Recovered", "Requeue", "Retry",
    "SchedulerState", "Scope", "StartOnHost", "StopEverywhere", "StopOnHost", "Submitted",
    "SwitchOff", "SwitchOn", "Tick", "demand_of", "retry_policy",
]
