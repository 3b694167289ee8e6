"""The scheduler: owns the queue and dispatch. A Ray async actor on the head node.

The ledger is the truth; this process holds only what it can rebuild from the ledger and the
node agents. A pass: refresh hosts, read queued work, admit (fair share, limits, caps) and
place (filters, scores, reserve), mark placed in the ledger, start the attempt on its host.
A restarted scheduler reattaches to attempts still running on their hosts and requeues the
ones that were lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import ray

from nodeagent.actor import pack, unpack

from .admission import Candidate, Policy, PressureLimits, Usage, admit
from .hosts import Hosts
from .ledger import Ledger, Row
from .placement import Demand, Reservations, Verdict, place
from .records import InvalidIteration, Iteration

log = logging.getLogger("tryfleet.scheduler")
SCHEDULER_NAME = "tryfleet-scheduler"
HOST_REFRESH_S = 1.0
WAIT_CHUNK_S = 10.0
DEFAULT_DISK_MIB = 1024


def demand_of(it: Iteration) -> Demand:
    return Demand(it.cpus, it.mem_mib, it.disk_mib or DEFAULT_DISK_MIB, it.image)


class Scheduler:
    def __init__(self, ledger_path: str, limits: dict[str, int] | None = None,
                 pressure: dict[str, float] | None = None, cpu_overcommit: float = 1.0,
                 suite_cap: int | None = None, tenant_cap: int | None = None) -> None:
        self.ledger = Ledger(Path(ledger_path))
        self.policy = Policy(limits=dict(limits or {}), default_suite_cap=suite_cap,
                             default_tenant_cap=tenant_cap)
        self.hosts = Hosts(PressureLimits(**(pressure or {})), cpu_overcommit)
        self.res = Reservations()
        self.usage = Usage()
        self.flying: dict[str, tuple[int, str, Candidate]] = {}  # id -> (attempt, host, cand)
        self.avoid: dict[str, set[str]] = defaultdict(set)
        self.tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self._kick()

    @staticmethod
    def _kick() -> None:
        """Start the loop as soon as this actor is up, also after Ray restarts it, without
        waiting for a caller: a call to ourselves runs right after __init__."""
        try:
            ray.get_runtime_context().current_actor.ping.remote()
        except Exception:  # not running as an actor (tests of the class itself)
            pass

    # ---- lifecycle -------------------------------------------------------------------------
    async def _ensure_started(self) -> None:
        failed = self._starting is not None and self._starting.done() \
            and not self._starting.cancelled() and self._starting.exception() is not None
        if self._starting is None or failed:
            self._starting = asyncio.create_task(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        self.hosts.discover()
        await self.hosts.refresh()
        await self._reconcile()
        self._loop_task = asyncio.create_task(self._loop())

    async def ping(self) -> dict[str, Any]:
        await self._ensure_started()
        return {"pid": os.getpid(), "started_at": self.started_at}

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        last_refresh = 0.0
        while True:
            try:
                if time.monotonic() - last_refresh > HOST_REFRESH_S:
                    self.hosts.discover()
                    for host in await self.hosts.refresh():
                        self._host_lost(host)
                    self._enforce_wall_budgets()
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
        views = {v.name: self.res.apply(v) for v in self.hosts.views()}
        if not views:
            return
        rows = {r.id: r for r in self.ledger.queued()}
        cands = [Candidate(r.id, r.suite, r.tenant, r.priority, r.seq, r.limits,
                           demand_of(r.iteration)) for r in rows.values()]
        placed: dict[str, str] = {}
        never: dict[str, str] = {}

        def try_place(c: Candidate) -> bool:
            # Retries prefer other hosts than the ones that failed, but do not need them.
            usable = [v for n, v in views.items() if n not in self.avoid.get(c.id, ())]
            decision = place(c.demand, usable)
            if decision.verdict is not Verdict.PLACED and len(usable) < len(views):
                decision = place(c.demand, list(views.values()))
            if decision.verdict is Verdict.PLACED and decision.host is not None:
                self.res.reserve(c.id, decision.host, c.demand)
                base = next(v for v in self.hosts.views() if v.name == decision.host)
                views[decision.host] = self.res.apply(base)
                placed[c.id] = decision.host
                return True
            if decision.verdict is Verdict.NEVER:
                never[c.id] = decision.explain()
            return False

        for c in admit(cands, self.usage, self.policy, try_place):
            host = placed[c.id]
            attempt = self.ledger.place(c.id, host)
            if attempt is None:  # cancelled between the read and now
                self.res.unreserve(c.id)
                self.usage.remove(c)
                continue
            self.flying[c.id] = (attempt, host, c)
            log.info("placed %s attempt %d on %s", c.id, attempt, host,
                     extra={"suite": c.suite, "tenant": c.tenant})
            self._spawn(self._run_attempt(rows[c.id], attempt, host, c, start=True))
        for iid, why in never.items():
            self.ledger.abandon(iid, f"cannot be placed: {why}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_attempt(self, row: Row, attempt: int, host: str, c: Candidate,
                           start: bool) -> None:
        handle = self.hosts.handle(host)
        outcome: dict[str, Any]
        try:
            if handle is None:
                raise ConnectionError(f"host {host} is gone")
            if start:
                self.ledger.running(row.id, attempt)
                await handle.start.remote(pack({
                    "id": row.id, "attempt": attempt, "iteration": row.iteration.to_wire(),
                    "ids": {"tenant": row.tenant, "suite": row.suite, "iteration": row.id,
                            "attempt": attempt, "trace_id": row.trace_id, "host": host}}))
            while True:
                got = await handle.wait.remote(row.id, attempt, WAIT_CHUNK_S)
                if got is not None:
                    outcome = unpack(got)
                    break
                if self.flying.get(row.id, (None,))[0] != attempt:
                    return  # settled elsewhere (host declared lost)
        except (ray.exceptions.RayError, ConnectionError) as err:
            self.hosts.mark_lost(host)
            outcome = {"state": "INFRA_ERROR", "error": f"host {host} lost: {err}", "host": host}
        self._settle(row, attempt, host, c, outcome)
        if handle is not None:
            try:
                handle.ack.remote(row.id, attempt)
            except ray.exceptions.RayError:
                pass

    def _settle(self, row: Row, attempt: int, host: str, c: Candidate,
                outcome: dict[str, Any]) -> None:
        if self.flying.get(row.id, (None,))[0] != attempt:
            return
        del self.flying[row.id]
        self.res.unreserve(row.id)
        self.usage.remove(c)
        state = outcome.get("state", "INFRA_ERROR")
        error = outcome.get("error")
        current = self.ledger.get_row(row.id)
        if current is not None and current.cancel_requested and state != "SUCCEEDED":
            state = "CANCELLED"
        if state == "INFRA_ERROR" and not outcome.get("bad_request"):
            self.avoid[row.id].add(host)
            if self.ledger.retry(row.id, attempt, error or "infrastructure error"):
                log.warning("retrying %s after %s on %s", row.id, error, host)
                self._poke()
                return
        if state == "FAILED" and self.ledger.retry(row.id, attempt, "command failed",
                                                   user_failure=True):
            self._poke()
            return
        self.ledger.finish(row.id, attempt, state, outcome)
        self.avoid.pop(row.id, None)
        self._poke()

    def _host_lost(self, host: str) -> None:
        for iid, (attempt, h, c) in list(self.flying.items()):
            if h == host:
                row = self.ledger.get_row(iid)
                if row is not None:
                    self._settle(row, attempt, host, c, {
                        "state": "INFRA_ERROR", "error": f"host {host} lost", "host": host})

    async def _reconcile(self) -> None:
        """After a restart: reattach to attempts still running, requeue the lost ones."""
        for row in self.ledger.in_flight():
            c = Candidate(row.id, row.suite, row.tenant, row.priority, row.seq, row.limits,
                          demand_of(row.iteration))
            host = row.host or ""
            self.res.reserve(row.id, host, c.demand)
            self.usage.add(c)
            self.flying[row.id] = (row.attempt, host, c)
            if self.hosts.handle(host) is None:
                self._settle(row, row.attempt, host, c, {
                    "state": "INFRA_ERROR", "error": f"host {host} gone after a restart"})
                continue
            log.info("reattaching to %s attempt %d on %s", row.id, row.attempt, host)
            self._spawn(self._run_attempt(row, row.attempt, host, c, start=False))

    def _enforce_wall_budgets(self) -> None:
        now = time.time()
        for suite in self.ledger.suites():
            limit = suite.get("max_wall_s")
            if limit and suite["created_at"] + limit < now:
                counts = self.ledger.counts(suite["name"])
                if any(k in counts for k in ("QUEUED", "PLACED", "RUNNING")):
                    self._cancel_rows(self.ledger.cancel(
                        suite=suite["name"], reason=f"suite wall-time budget of {limit}s used up"))

    # ---- API -------------------------------------------------------------------------------
    async def submit(self, iterations: list[dict[str, Any]], suite: str, tenant: str,
                     limits: dict[str, int] | None = None, max_iterations: int | None = None,
                     max_wall_s: float | None = None) -> list[str]:
        await self._ensure_started()
        its = []
        for n, data in enumerate(iterations):
            try:
                its.append(Iteration.from_wire(data))
            except InvalidIteration as err:
                raise InvalidIteration(f"iteration {n + 1}: {err}") from None
        self._check_fits(its)
        if limits:
            self.policy = Policy(**{**_policy_dict(self.policy),
                                    "limits": {**self.policy.limits, **limits}})
        self.ledger.ensure_suite(suite, tenant, max_iterations, max_wall_s)
        ids = self.ledger.submit(its, suite, tenant)
        self._poke()
        return ids

    def _check_fits(self, its: list[Iteration]) -> None:
        empty = [v.__class__(**{**_view_dict(v), "used_cpus": 0, "used_mem_mib": 0,
                                "used_disk_mib": 0, "pressured": False})
                 for v in self.hosts.views()]
        if not empty:
            return
        for n, it in enumerate(its):
            decision = place(demand_of(it), empty)
            if decision.verdict is Verdict.NEVER:
                raise InvalidIteration(f"iteration {n + 1} ({it.id or 'no id'}) can never run "
                                       f"on this fleet: {decision.explain()}")

    async def cancel(self, iid: str | None = None, suite: str | None = None,
                     tenant: str | None = None, everything: bool = False) -> dict[str, int]:
        await self._ensure_started()
        rows = self.ledger.cancel(iid=iid, suite=suite, tenant=tenant, everything=everything,
                                  reason="cancelled by request")
        queued = self.ledger.last_cancelled_queued
        stopped = await self._cancel_rows(rows)
        if everything:
            await asyncio.gather(*(h.handle.cancel_all.remote() for h in
                                   self.hosts.by_name.values() if not h.lost),
                                 return_exceptions=True)
        return {"queued_cancelled": queued, "running_stopped": stopped}

    async def _cancel_rows(self, rows: list[tuple[str, int, str]]) -> int:
        calls = []
        for iid, attempt, host in rows:
            handle = self.hosts.handle(host)
            if handle is not None:
                calls.append(handle.cancel.remote(iid, attempt))
        await asyncio.gather(*calls, return_exceptions=True)
        return len(calls)

    async def status(self) -> dict[str, Any]:
        await self._ensure_started()
        return {"pid": os.getpid(), "ledger": str(self.ledger.path),
                "counts": self.ledger.counts(), "hosts": self.hosts.describe(),
                "limits": dict(self.policy.limits), "in_flight": len(self.flying),
                "suites": {s["name"]: self.ledger.counts(s["name"]) for s in self.ledger.suites()}}

    async def results(self, ids: list[str] | None = None, suite: str | None = None,
                      terminal_only: bool = True) -> list[dict[str, Any]]:
        from .records import TERMINAL

        await self._ensure_started()
        states = list(TERMINAL) if terminal_only else None
        return [r.to_json() for r in self.ledger.results(ids=ids, suite=suite, states=states)]

    async def counts(self, suite: str | None = None) -> dict[str, int]:
        return self.ledger.counts(suite)

    async def where(self, iid: str) -> dict[str, Any] | None:
        row = self.ledger.get_row(iid)
        if row is None:
            return None
        return {"id": iid, "state": row.state, "attempt": row.attempt, "host": row.host,
                "suite": row.suite, "tenant": row.tenant, "trace_id": row.trace_id}

    async def ps(self, all_states: bool = False, limit: int = 200) -> list[dict[str, Any]]:
        await self._ensure_started()
        states = None if all_states else ["QUEUED", "PLACED", "RUNNING"]
        return [r.to_json() | {"stdout": "", "stderr": ""}
                for r in self.ledger.results(states=states, limit=limit)]

    async def attempts(self, iid: str) -> list[dict[str, Any]]:
        return self.ledger.attempts(iid)

    async def lease(self, lease_id: str, image: str, cpus: int, mem_mib: int,
                    disk_mib: int | None) -> dict[str, Any]:
        """Hold capacity for an interactive sandbox: placed, waiting, or never possible."""
        await self._ensure_started()
        return Leases.lease(self, lease_id, Demand(cpus, mem_mib, disk_mib or DEFAULT_DISK_MIB,
                                                   image))

    async def release(self, lease_id: str) -> bool:
        released = self.res.unreserve(lease_id)
        self._poke()
        return released


def _policy_dict(p: Policy) -> dict[str, Any]:
    return {f: getattr(p, f) for f in p.__dataclass_fields__}


def _view_dict(v: Any) -> dict[str, Any]:
    return {f: getattr(v, f) for f in v.__dataclass_fields__}


class Leases:
    """Capacity held by interactive sandboxes, placed like iterations but not queued."""

    @staticmethod
    def lease(sched: Scheduler, lease_id: str, demand: Demand) -> dict[str, Any]:
        views = [sched.res.apply(v) for v in sched.hosts.views()]
        decision = place(demand, views)
        if decision.verdict is Verdict.PLACED and decision.host is not None:
            sched.res.reserve(lease_id, decision.host, demand)
        return {"verdict": decision.verdict.value, "host": decision.host,
                "why": decision.explain()}
