"""The scheduler's engine: the backlog and the attempts in flight, the scheduling pass, outcomes,
and recovery after a restart. No Ray API of its own: service.py is the actor around it.

The ledger is the truth; the engine holds only what it can rebuild from the ledger and the node
agents: the backlog of queued iterations (read once at start, then kept in step with submit,
retry and cancel) and the attempts in flight. A pass: admit (fair share, limits, caps) and
place (filters, scores, reserve) from the head of the backlog, mark all placements in the
ledger in one transaction, hand each host its attempts in one call (dispatch.py). Outcomes come
back in batches per host and are committed in one transaction per batch, fenced by attempt. A
restarted scheduler reattaches to attempts still running on their hosts and requeues the ones
that were lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from tryfleet.errors import CannotPlace

from .admission import Candidate, Policy, PressureLimits, Usage, admit
from .backlog import Backlog
from .dispatch import Dispatcher, Flight
from .hosts import Hosts
from .ledger import Ledger, Report, Row
from .metrics import Metrics
from .placement import Demand, Reservations, Verdict, place
from .records import Iteration

log = logging.getLogger("tryfleet.scheduler")
HOST_REFRESH_S = 1.0
DEFAULT_DISK_MIB = 1024


def demand_of(it: Iteration) -> Demand:
    return Demand(it.cpus, it.mem_mib, it.disk_mib or DEFAULT_DISK_MIB, it.image)


class Engine:
    def __init__(self, ledger_path: str, limits: dict[str, int] | None = None,
                 pressure: dict[str, float] | None = None, cpu_overcommit: float = 1.0,
                 suite_cap: int | None = None, tenant_cap: int | None = None) -> None:
        self.ledger = Ledger(Path(ledger_path))
        self.policy = Policy(limits=dict(limits or {}), default_suite_cap=suite_cap,
                             default_tenant_cap=tenant_cap)
        self.hosts = Hosts(PressureLimits(**(pressure or {})), cpu_overcommit)
        self.dispatch = Dispatcher(self.hosts, self._on_outcomes, self._host_lost)
        self.res = Reservations()
        self.usage = Usage()
        self.backlog = Backlog()  # queued iterations, as in the ledger
        self.rows: dict[str, Row] = {}  # the rows of what is queued or in flight
        self.flying: dict[str, Flight] = {}
        self.avoid: dict[str, set[str]] = defaultdict(set)
        self.tasks: set[asyncio.Task[None]] = set()
        self.metrics = Metrics()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self.hosts.discover()
        await self.hosts.refresh()
        await self._reconcile()
        self._loop_task = asyncio.create_task(self._loop())

    def poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        last_refresh = 0.0
        while True:
            try:
                if time.monotonic() - last_refresh > HOST_REFRESH_S:
                    self.hosts.discover()
                    for host in await self.hosts.refresh():
                        self._host_lost(host, f"host {host} lost")
                    self._enforce_wall_budgets()
                    self.usage.prune(self.backlog.suites())
                    last_refresh = time.monotonic()
                self._schedule()
            except Exception:
                log.exception("scheduling pass failed; trying again")
            assert self._wake is not None
            try:
                await asyncio.wait_for(self._wake.wait(), HOST_REFRESH_S)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    # ---- scheduling pass -------------------------------------------------------------------
    def _schedule(self) -> None:
        """One pass: admit and place from the head of the backlog, record every placement in
        one transaction, then hand each host its attempts in one call."""
        if not self.backlog:
            return
        t_pass = time.perf_counter()
        base = {v.name: v for v in self.hosts.views()}
        views = {n: self.res.apply(v) for n, v in base.items()}
        # Every iteration takes at least one cpu: no more can start in this pass than there
        # are free cpus, so admission looks at no more than that from each suite.
        room = sum(max(0, v.cpus - v.used_cpus) for v in views.values()
                   if v.healthy and not v.pressured and not v.draining)
        if not views or room <= 0:
            return
        placed: dict[str, str] = {}
        never: dict[str, str] = {}
        placed_in = self.metrics.placed

        def try_place(c: Candidate) -> bool:
            t0 = time.perf_counter()
            avoid = self.avoid.get(c.id)
            # Retries prefer other hosts than the ones that failed, but do not need them.
            usable = views.values() if not avoid else \
                [v for n, v in views.items() if n not in avoid]
            decision = place(c.demand, usable)
            if decision.verdict is not Verdict.PLACED and avoid:
                decision = place(c.demand, views.values())
            ok = decision.verdict is Verdict.PLACED and decision.host is not None
            if ok:
                host = decision.host
                self.res.reserve(c.id, host, c.demand)
                views[host] = self.res.apply(base[host])
                placed[c.id] = host
            elif decision.verdict is Verdict.NEVER:
                never[c.id] = decision.explain()
            placed_in(time.perf_counter() - t0)
            return ok

        admitted = admit(self.backlog.heads(room), self.usage, self.policy, try_place)
        for iid, why in never.items():
            self.ledger.abandon(iid, f"cannot be placed: {why}")
            self._forget(iid)
        if admitted:
            self._launch(admitted, placed)
        self.metrics.passes += 1
        self.metrics.pass_s += time.perf_counter() - t_pass

    def _launch(self, admitted: list[Candidate], placed: dict[str, str]) -> None:
        attempts = self.ledger.place_many([(c.id, placed[c.id]) for c in admitted])
        batches: dict[str, list[Flight]] = defaultdict(list)
        for c, attempt in zip(admitted, attempts):
            self.backlog.discard(c.id)
            row = self.rows.get(c.id) if attempt is not None else None
            if attempt is not None and row is None:
                row = self.ledger.get_row(c.id)
            if attempt is None or row is None:  # cancelled between the submit and now
                self.res.unreserve(c.id)
                self.usage.remove(c, ran=False)
                self.rows.pop(c.id, None)
                continue
            f = self.flying[c.id] = Flight(attempt, placed[c.id], c, row)
            batches[f.host].append(f)
            log.info("placed %s attempt %d on %s", c.id, attempt, f.host,
                     extra={"suite": c.suite, "tenant": c.tenant})
        self.ledger.running_many([(f.cand.id, f.attempt) for fs in batches.values()
                                  for f in fs])
        for host, flights in batches.items():
            self.dispatch.start(host, flights)

    def _is_flying(self, iid: str, attempt: int) -> bool:
        f = self.flying.get(iid)
        return f is not None and f.attempt == attempt

    def _forget(self, iid: str) -> None:
        self.backlog.discard(iid)
        self.rows.pop(iid, None)
        self.avoid.pop(iid, None)

    # ---- outcomes --------------------------------------------------------------------------
    def _on_outcomes(self, host: str, outcomes: list[dict[str, Any]]) -> None:
        """Outcomes collected from host: committed in one transaction (stale attempts are
        fenced out), then the scheduler's own books."""
        reports, seen = [], set()
        for o in outcomes:
            f = self.flying.get(o["id"])
            if f is not None and f.attempt == o["attempt"] and f.cand.id not in seen:
                seen.add(f.cand.id)
                reports.append(Report(f.cand.id, f.attempt, o.get("state", "INFRA_ERROR"), o,
                                      retry_infra=not o.get("bad_request")))
        self._settle(reports)

    def _host_lost(self, host: str, why: str) -> None:
        self._settle([Report(f.cand.id, f.attempt, "INFRA_ERROR", {"error": why, "host": host})
                      for f in self.flying.values() if f.host == host])

    def _settle(self, reports: list[Report]) -> None:
        if not reports:
            return
        for rep, new in zip(reports, self.ledger.settle(reports)):
            f = self.flying.pop(rep.iid)
            self.res.unreserve(rep.iid)
            self.usage.remove(f.cand)
            if new == "QUEUED":
                if rep.state not in ("FAILED", "SUCCEEDED"):
                    self.avoid[rep.iid].add(f.host)
                log.warning("retrying %s after %s on %s", rep.iid,
                            rep.outcome.get("error") or rep.state, f.host)
                self.backlog.add(f.cand)
            else:
                self.rows.pop(rep.iid, None)
                self.avoid.pop(rep.iid, None)
        self.poke()

    async def _reconcile(self) -> None:
        """After a restart: the backlog from the ledger; reattach to attempts still running,
        requeue the ones their hosts do not know."""
        for row in self.ledger.queued(limit=-1):
            self._enqueue(row)
        lost = []
        for row in self.ledger.in_flight():
            c = _candidate(row)
            host = row.host or ""
            self.res.reserve(row.id, host, c.demand)
            self.usage.add(c)
            self.rows[row.id] = row
            self.flying[row.id] = Flight(row.attempt, host, c, row)
        by_host: dict[str, list[Flight]] = defaultdict(list)
        for f in self.flying.values():
            by_host[f.host].append(f)
        known = await asyncio.gather(*(self.dispatch.known(h) for h in by_host))
        for (host, flights), here in zip(by_host.items(), known):
            if here is None:
                lost += [Report(f.cand.id, f.attempt, "INFRA_ERROR",
                                {"error": f"host {host} gone after a restart", "host": host})
                         for f in flights]
                continue
            for f in flights:
                if (f.cand.id, f.attempt) in here:
                    log.info("reattaching to %s attempt %d on %s", f.cand.id, f.attempt, host)
                else:
                    lost.append(Report(f.cand.id, f.attempt, "INFRA_ERROR", {
                        "error": f"attempt {f.attempt} of {f.cand.id} is unknown on {host} "
                                 "(its node agent restarted?)", "host": host, "lost": True}))
            self.dispatch.ensure_collector(host)
        self._settle([r for r in lost if r.iid in self.flying])

    def _enqueue(self, row: Row) -> None:
        if row.state == "QUEUED" and not row.cancel_requested and row.id not in self.flying:
            self.rows[row.id] = row
            self.backlog.add(_candidate(row))

    def _enforce_wall_budgets(self) -> None:
        now = time.time()
        for suite in self.ledger.suites():
            limit = suite.get("max_wall_s")
            if limit and suite["created_at"] + limit < now:
                counts = self.ledger.counts(suite["name"])
                if any(k in counts for k in ("QUEUED", "PLACED", "RUNNING")):
                    rows = self.ledger.cancel(suite=suite["name"],
                                              reason=f"suite wall-time budget of {limit}s "
                                                     "used up")
                    self._drop_queued(suite=suite["name"])
                    self._spawn(self.dispatch.cancel(rows, self._is_flying))

    def _drop_queued(self, iid: str | None = None, suite: str | None = None,
                     tenant: str | None = None, everything: bool = False) -> None:
        """The backlog after the ledger cancelled the queued iterations this selector names
        (the ledger's precedence: everything, then id, then suite, then tenant)."""
        if everything:
            hit = [c.id for c in self.backlog]
        elif iid is not None:
            hit = [iid]
        elif suite is not None:
            hit = [c.id for c in self.backlog if c.suite == suite]
        elif tenant is not None:
            hit = [c.id for c in self.backlog if c.tenant == tenant]
        else:
            hit = []
        for c_id in hit:
            if c_id in self.backlog:
                self._forget(c_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ---- what the API asks -----------------------------------------------------------------
    def submit(self, its: list[Iteration], suite: str, tenant: str,
               limits: dict[str, int] | None, max_iterations: int | None,
               max_wall_s: float | None) -> list[str]:
        self.check_fits(its)
        if limits:
            self.policy = replace(self.policy, limits={**self.policy.limits, **limits})
        self.ledger.ensure_suite(suite, tenant, max_iterations, max_wall_s)
        rows = self.ledger.submit_rows(its, suite, tenant)
        for row in rows:
            self._enqueue(row)
        self.poke()
        return [r.id for r in rows]

    def check_fits(self, its: list[Iteration]) -> None:
        empty = [replace(v, used_cpus=0, used_mem_mib=0, used_disk_mib=0, pressured=False)
                 for v in self.hosts.views()]
        if not empty:
            return
        verdicts: dict[Demand, Any] = {}
        for n, it in enumerate(its):
            demand = demand_of(it)
            decision = verdicts.get(demand)
            if decision is None:
                decision = verdicts[demand] = place(demand, empty)
            if decision.verdict is Verdict.NEVER:
                raise CannotPlace(f"iteration {n + 1} ({it.id or 'no id'}) can never run "
                                  f"on this fleet: {decision.explain()}", decision.explain())

    async def cancel(self, iid: str | None = None, suite: str | None = None,
                     tenant: str | None = None, everything: bool = False) -> dict[str, int]:
        rows = self.ledger.cancel(iid=iid, suite=suite, tenant=tenant, everything=everything,
                                  reason="cancelled by request")
        queued = self.ledger.last_cancelled_queued
        self._drop_queued(iid, suite, tenant, everything)
        stopped = await self.dispatch.cancel(rows, self._is_flying)
        if everything:
            await self.dispatch.cancel_all()
        return {"queued_cancelled": queued, "running_stopped": stopped}

    def stats(self, reset: bool = False) -> dict[str, Any]:
        out = self.metrics.summary(self.ledger.commits, self.dispatch.calls,
                                   self.dispatch.collected)
        if reset:
            self.metrics = Metrics(commits_at=self.ledger.commits,
                                   calls_at=dict(self.dispatch.calls),
                                   collected_at=self.dispatch.collected)
        return out

    def lease(self, lease_id: str, demand: Demand) -> dict[str, Any]:
        """Hold capacity for an interactive sandbox: placed like an iteration, not queued."""
        decision = place(demand, [self.res.apply(v) for v in self.hosts.views()])
        if decision.verdict is Verdict.PLACED and decision.host is not None:
            self.res.reserve(lease_id, decision.host, demand)
        return {"verdict": decision.verdict.value, "host": decision.host,
                "why": decision.explain()}

    def release(self, lease_id: str) -> bool:
        released = self.res.unreserve(lease_id)
        self.poke()
        return released


def _candidate(row: Row) -> Candidate:
    return Candidate(row.id, row.suite, row.tenant, row.priority, row.seq, row.limits,
                     demand_of(row.iteration))

