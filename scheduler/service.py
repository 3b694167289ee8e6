"""The scheduler as a Ray async actor on the head node: its API (submit, cancel, limits, queries,
leases for interactive sandboxes) over the engine (engine.py), which owns the queue and dispatch.

Iteration ids and suite names are per tenant: every call about them takes the tenant, and
answers with the tenant's own ids. `tenant=None` (an admin's view) means every tenant: for one
id or suite, the one tenant that has it (AmbiguousId, a BadRequest, when several do).

The actor starts the engine's loop right after it is created, also after Ray restarts it, and
every call waits for that start, so a caller never sees a half-recovered scheduler.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from tryfleet import logs
from tryfleet.errors import BadRequest, NotFound
from tryfleet.logs import LogSetup
from tryfleet.selfstart import kick_self
from tryfleet.wire import AttemptKey, Output, pack, unpack

from . import exporter
from .core import DEFAULT_DISK_MIB, Scope
from .engine import Engine
from .ledger_reads import AmbiguousId
from .masked import masked_live
from .placement import Demand
from .records import (
    IN_FLIGHT,
    TERMINAL,
    InvalidIteration,
    Iteration,
    Phase,
    Row,
    check_name,
    qualified,
)
from .sandbox_ops import SandboxOps
from .sandboxes import StateFilter
from .switch_ops import SwitchOps

log = logging.getLogger("tryfleet.scheduler")

SCHEDULER_NAME = "tryfleet-scheduler"
MAX_PAGE = 10_000  # rows one listing or one page of ended results may ask for
OUTPUT_TIMEOUT_S = 10.0


class Scheduler:
    def __init__(self, ledger_path: str, limits: dict[str, int] | None = None,
                 pressure: dict[str, float] | None = None, cpu_overcommit: float = 1.0,
                 suite_cap: int | None = None, tenant_cap: int | None = None,
                 audit_dir: str | None = None, log: LogSetup | None = None) -> None:
        """audit_dir: the data directory whose audit trail records what the scheduler does
        (iteration states and commands, sandboxes opened and closed); None: none is kept.
        log: how this process logs (None: as it is set up already)."""
        if log is not None:  # its file beside the ledger when there is no audit_dir
            log.apply("scheduler", audit_dir or os.path.dirname(ledger_path))
        audit = None
        if audit_dir is not None:
            from tryfleet.audit import Audit

            audit = Audit(audit_dir)
        self.engine = Engine(ledger_path, limits, pressure, cpu_overcommit, suite_cap,
                             tenant_cap, audit)
        self.ledger = self.engine.ledger
        self.sandboxes = SandboxOps(self.engine)
        self.switch_ops = SwitchOps(self.engine)
        self._starting: asyncio.Task[None] | None = None
        self.started_at = time.time()
        kick_self("ping")  # the loop starts as soon as this actor is up, also after a restart

    async def _ensure_started(self) -> None:
        failed = self._starting is not None and self._starting.done() \
            and not self._starting.cancelled() and self._starting.exception() is not None
        if self._starting is None or failed:
            self._starting = asyncio.create_task(self.engine.start())
        await asyncio.shield(self._starting)

    async def ping(self) -> dict[str, Any]:
        await self._ensure_started()
        return {"pid": os.getpid(), "started_at": self.started_at}

    # ---- work --------------------------------------------------------------------------------
    async def submit(self, iterations: list[dict[str, Any]], suite: str, tenant: str,
                     limits: dict[str, int] | None = None, max_iterations: int | None = None,
                     max_wall_s: float | None = None, request_id: str = "",
                     key_id: str = "") -> list[str]:
        """Record the tenant's iterations in its suite and queue them; their ids (the tenant's
        own). request_id and key_id: the API request and key that submitted them (recorded,
        and carried to the hosts' logs). An iteration names the limits it holds; their sizes
        are set by admins (set_limit). `limits` sizes nothing: it stays in its place for the
        callers of the old signature and must be empty or agree with the sizes in force."""
        await self._ensure_started()
        check_name("tenant", tenant)
        check_name("suite", suite)
        with logs.bind(tenant=tenant, suite=suite, request_id=request_id, key=key_id):
            return self._submit(iterations, suite, tenant, limits, max_iterations, max_wall_s,
                                request_id, key_id)

    def _submit(self, iterations: list[dict[str, Any]], suite: str, tenant: str,
                limits: dict[str, int] | None, max_iterations: int | None,
                max_wall_s: float | None, request_id: str, key_id: str) -> list[str]:
        its = []
        for n, data in enumerate(iterations):
            try:
                its.append(Iteration.from_wire(data))
            except InvalidIteration as err:
                raise InvalidIteration(f"iteration {n + 1}: {err}") from None
        if limits:
            sizes = self.engine.policy.limits
            differ = {k: v for k, v in limits.items() if sizes.get(k) != v}
            if differ:
                raise BadRequest(
                    "limit sizes are set by admins (`tryfleet up --limit`, PUT "
                    f"/v1/fleet/limits/NAME), not by a batch: {_sizes(differ)} differ from "
                    f"the sizes in force ({_sizes(sizes) or 'none'}); name the limits in "
                    "each iteration's `limits`")
        ids = self.engine.submit(its, suite, tenant, max_iterations, max_wall_s, request_id,
                                 key_id)
        log.info("%d iteration(s) submitted to suite %s", len(ids), suite)
        return ids

    async def cancel(self, iid: str | None = None, suite: str | None = None,
                     tenant: str | None = None, everything: bool = False) -> dict[str, int]:
        """Cancel one iteration or a suite (of tenant; with tenant None, of the one tenant
        that has it: AmbiguousId when several do), a tenant's everything, or everything."""
        await self._ensure_started()
        if everything:
            return self.engine.cancel(Scope.EVERYTHING)
        if iid is not None:
            row = self.ledger.get_row(iid, tenant)
            return self.engine.cancel(Scope.ITERATION, row.key) if row else dict(_NOTHING)
        if suite is not None:
            owners = [tenant] if tenant is not None else self.ledger.suite_tenants(suite)
            if len(owners) > 1:
                raise AmbiguousId(f"suite {suite!r} exists for several tenants "
                                  f"({', '.join(owners[:10])}): name the tenant")
            return self.engine.cancel(Scope.SUITE, qualified(owners[0], suite)) if owners \
                else dict(_NOTHING)
        if tenant is not None:
            return self.engine.cancel(Scope.TENANT, tenant)
        raise InvalidIteration("cancel needs an id, a suite, a tenant, or everything")

    async def set_limit(self, name: str, value: int | None, by: str = "") -> dict[str, int]:
        """Size the fleet-wide shared-resource limit `name` (None: unlimited) for everyone: an
        admin's act, kept in the ledger across restarts. The limits in force after it."""
        await self._ensure_started()
        return self.engine.set_limit(name, value, by)

    # ---- kill switches (admins; switches.py says what each level and strength does) --------
    async def flip_switch(self, level: str, target: str, strength: str, reason: str, by: str,
                          tenant: str | None = None) -> dict[str, Any]:
        """Flip a freeze or a kill on (level, target), kept in the ledger until lifted;
        tenant qualifies an iteration id or a suite. {"switch", "created", and what a kill
        stopped now}. NotFound for a target nobody knows."""
        await self._ensure_started()
        return self.switch_ops.flip(level, target, strength, reason, by, tenant)

    async def lift_switch(self, level: str, target: str, by: str, reason: str = "",
                          tenant: str | None = None) -> dict[str, Any]:
        """The switch on (level, target), lifted (NotFound when none is in force there)."""
        await self._ensure_started()
        return self.switch_ops.lift(level, target, by, reason, tenant)

    async def switches(self, history: bool = False) -> list[dict[str, Any]]:
        """The switches in force (oldest first), or (history) every one, newest first."""
        return self.switch_ops.list(history)

    async def limits(self) -> dict[str, int]:
        return dict(self.engine.policy.limits)

    async def lease(self, lease_id: str, image: str, cpus: int, mem_mib: int,
                    disk_mib: int | None, timeout_s: float) -> dict[str, Any]:
        """Hold capacity for an interactive sandbox for timeout_s: placed, waiting, or never
        possible. A lease nobody releases ends with its timeout (its sandbox is closed).
        (The SDK over Ray; over HTTP, open_sandbox does it all.)"""
        await self._ensure_started()
        return self.sandboxes.lease(lease_id, Demand(cpus, mem_mib,
                                                     disk_mib or DEFAULT_DISK_MIB, image),
                                    timeout_s)

    async def release(self, lease_id: str) -> None:
        await self._ensure_started()
        self.sandboxes.release(lease_id)

    # ---- interactive sandboxes (tenant-scoped; tenant None: an admin, who sees all) ---------
    async def open_sandbox(self, tenant: str, image: str = "base", cpus: int = 1,
                           mem_mib: int = 512, disk_mib: int | None = None,
                           timeout_s: float = 600.0, metadata: dict[str, str] | None = None,
                           key_id: str = "", request_id: str = "",
                           limits: dict[str, int] | None = None,
                           wait_s: float = 0.0, egress: list[str] | None = None
                           ) -> dict[str, Any]:
        """A sandbox opened on a host and recorded; `limits` are the tenant's quotas
        (max_sandboxes, max_vcpus_in_use, max_mem_mib_in_use), checked with what it holds;
        `egress` its policy's allowlist rules (none: no network device).
        QuotaExceeded, CannotPlace, NoRoom (after waiting wait_s), InfrastructureError."""
        await self._ensure_started()
        rec = await self.sandboxes.open(tenant, image, cpus, mem_mib, disk_mib, timeout_s,
                                        metadata=metadata, key_id=key_id,
                                        request_id=request_id, limits=limits, wait_s=wait_s,
                                        egress=tuple(egress or ()))
        return rec.to_json()

    async def get_sandbox(self, sid: str, tenant: str | None = None) -> dict[str, Any]:
        return self.sandboxes.get(sid, tenant).to_json()

    async def list_sandboxes(self, tenant: str | None = None, state: StateFilter = "open",
                             limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        """{"items": [sandbox, ...], "next_cursor": str | None}, in the order opened."""
        items, nxt = self.sandboxes.list(tenant, state, limit, cursor)
        return {"items": [r.to_json() for r in items], "next_cursor": nxt}

    async def extend_sandbox(self, sid: str, timeout_s: float,
                             tenant: str | None = None) -> dict[str, Any]:
        await self._ensure_started()
        return (await self.sandboxes.extend(sid, tenant, timeout_s)).to_json()

    async def close_sandbox(self, sid: str, tenant: str | None = None,
                            reason: str = "closed by request") -> dict[str, Any]:
        await self._ensure_started()
        return (await self.sandboxes.close(sid, tenant, reason)).to_json()

    # ---- queries -----------------------------------------------------------------------------
    # tenant: whose iterations and suites; None for every tenant's (an admin's view).
    async def status(self, suites: bool = True, counts: bool = True) -> dict[str, Any]:
        """The fleet as an admin sees it: hosts, limits (size and in use), and (unless
        counts=False) counts by state, by tenant and (unless suites=False) by suite, keyed
        "tenant/suite". Counting reads the whole ledger: a reader of its own (the gateway)
        asks for counts=False and counts itself."""
        await self._ensure_started()
        e = self.engine
        out: dict[str, Any] = {
            "pid": os.getpid(), "ledger": str(self.ledger.path),
            "hosts": [h.to_json() for h in e.hosts.describe()],
            "limits": dict(e.policy.limits),
            "limits_in_use": {k: v for k, v in e.core.state.usage.limits.items() if v},
            "in_flight": e.in_flight}
        if counts:
            out |= self.ledger.tenant_counts()
        if counts and suites:
            out["suites"] = {qualified(t, s): c
                             for (t, s), c in self.ledger.counts_by("tenant", "suite").items()}
        return out

    async def results(self, ids: list[str] | None = None, suite: str | None = None,
                      terminal_only: bool = True, tenant: str | None = None
                      ) -> list[dict[str, Any]]:
        await self._ensure_started()
        states = list(TERMINAL) if terminal_only else None
        return [r.to_json() for r in self.ledger.results(tenant=tenant, ids=ids, suite=suite,
                                                         states=states)]

    async def stats(self, reset: bool = False) -> dict[str, Any]:
        """Counters of the dispatch path since the start (or the last reset): placement
        decision times, passes, ledger commits, Ray calls to hosts, outcomes collected."""
        return self.engine.stats(reset)

    async def metrics(self, node_timeout_s: float = exporter.NODE_TIMEOUT_S) -> dict[str, Any]:
        """The fleet's Prometheus metrics for the gateway's /metrics (exporter.gather): this
        process's, the fleet as the engine sees it, and each node agent's that answered
        within node_timeout_s. Does not wait for the engine's start."""
        return await exporter.gather(self.engine, min(max(node_timeout_s, 0.1), 10.0))

    async def counts(self, suite: str | None = None, tenant: str | None = None
                     ) -> dict[str, int]:
        return self.ledger.counts(suite, tenant)

    async def where(self, iid: str, tenant: str | None = None) -> dict[str, Any] | None:
        row = self.ledger.get_row(iid, tenant)
        if row is None:
            return None
        return {"id": iid, "state": row.state, "attempt": row.attempt, "host": row.host,
                "suite": row.suite, "tenant": row.tenant, "trace_id": row.trace_id}

    async def ps(self, all_states: bool = False, limit: int = 200, tenant: str | None = None
                 ) -> list[dict[str, Any]]:
        await self._ensure_started()
        states = None if all_states else ["QUEUED", "PLACED", "RUNNING"]
        return [r.to_json() | {"stdout": "", "stderr": ""}
                for r in self.ledger.results(tenant=tenant, states=states, limit=limit)]

    async def attempts(self, iid: str, tenant: str | None = None) -> list[dict[str, Any]]:
        row = self._row(iid, tenant)
        return self.ledger.attempts(row.id, row.tenant)

    def _row(self, iid: str, tenant: str | None) -> Row:
        row = self.ledger.get_row(iid, tenant)
        if row is None:
            raise NotFound(f"no iteration {iid!r}")
        return row

    # ---- queries of the SDK (each one answer, JSON-ready but for output bytes) ---------------
    # The ledger is the truth: these do not wait for the engine to start.
    async def iterations(self, states: list[str] | None = None, suite: str | None = None,
                         limit: int = 200, tenant: str | None = None, after: int = 0
                         ) -> list[dict[str, Any]]:
        """Iterations in submission order, without their output; after: the `seq` of the
        last one of the previous page."""
        if states is not None:
            unknown = sorted(set(states) - {p.value for p in Phase})
            if unknown:
                raise BadRequest(f"unknown state(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(p.value for p in Phase)}")
        _check_limit(limit)
        return [r.to_json() for r in self.ledger.results(
            tenant=tenant, states=states, suite=suite, limit=limit, output=False,
            after_seq=after)]

    async def get(self, iid: str, tenant: str | None = None) -> dict[str, Any]:
        """{"result": the iteration as it stands, "attempts": [...]}; NotFound if unknown."""
        row = self._row(iid, tenant)
        result = self.ledger.result(row.id, row.tenant)
        if result is None:
            raise NotFound(f"no iteration {iid!r}")
        return {"result": result.to_json(), "attempts": self.ledger.attempts(row.id, row.tenant)}

    async def suite(self, name: str, tenant: str) -> dict[str, Any]:
        """The tenant's suite and how many of its iterations are in each state."""
        found = self.ledger.suite(tenant, name)
        if found is None:
            raise NotFound(f"no suite {name!r}")
        return {**found, "counts": self.ledger.counts(name, tenant)}

    async def ended_since(self, cursor: int = 0, suite: str | None = None,
                          ids: list[str] | None = None, limit: int = 1000,
                          tenant: str | None = None) -> dict[str, Any]:
        """{"results": what ended after cursor (of tenant and suite, among ids), "cursor": the
        next}."""
        _check_limit(limit)
        if not isinstance(cursor, int) or cursor < 0:
            raise BadRequest(f"cursor must be an integer >= 0 (from a previous answer), "
                             f"got {cursor!r}")
        got, nxt = self.ledger.ended_since(cursor, tenant=tenant, suite=suite, ids=ids,
                                           limit=limit)
        return {"results": [r.to_json() for r in got], "cursor": nxt}

    async def output(self, iid: str, out_offset: int = 0, err_offset: int = 0,
                     tenant: str | None = None) -> dict[str, Any]:
        """The iteration's output past the offsets: from the ledger once it has ended ("done"),
        else live from the host running its current attempt (nothing when it has not started
        or its host cannot be asked)."""
        row = self._row(iid, tenant)
        reply: dict[str, Any] = {"stdout": b"", "stderr": b"", "done": row.state in TERMINAL,
                                 "state": row.state, "attempt": row.attempt, "host": row.host}
        if reply["done"]:
            reply["stdout"], reply["stderr"] = self.ledger.output(
                row.id, out_offset, err_offset, row.tenant) or (b"", b"")
        elif row.state in IN_FLIGHT and row.host:
            host = row.host

            async def read(out_at: int, err_at: int) -> tuple[bytes, bytes] | None:
                return await self._live_output(host, row.key, row.attempt, out_at, err_at)

            live = await masked_live(self.engine.secrets.mask_values(row.tenant), read,
                                     out_offset, err_offset)
            if live is not None:
                reply["stdout"], reply["stderr"] = live
        return reply

    async def _live_output(self, host: str, key: str, attempt: int, out_offset: int,
                           err_offset: int) -> tuple[bytes, bytes] | None:
        """What the attempt has printed so far, asked of its node agent (read only)."""
        ep = self.engine.hosts.endpoint(host)
        if ep is None:
            return None
        try:
            got = await asyncio.wait_for(ep.call("output", pack(AttemptKey(key, attempt)),
                                                 out_offset, err_offset), OUTPUT_TIMEOUT_S)
        except Exception as err:  # a host that cannot say: no live output, nothing else
            log.debug("live output of %s attempt %d from %s: %s", key, attempt, host, err)
            return None
        if got is None:
            return None
        live = unpack(Output, got)
        return live.stdout, live.stderr


_NOTHING = {"queued_cancelled": 0, "running_stopped": 0}


def _sizes(limits: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(limits.items()))


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
