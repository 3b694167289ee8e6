"""What the control room shows, as one caller may see it: the fleet at a glance, suites with
their progress, open sandboxes, the switches in force, and iterations ended per minute.

Each part is there only when the caller's key may read it through the /v1 endpoint that
serves the same thing, with the same tenancy: hosts, limits and switches for admins (GET
/v1/fleet, /v1/switches); counts, suites and throughput with the `read` or `batch` scope
(/v1/iterations, /v1/suites), only the key's tenant's unless it is an admin's; open sandboxes
with `sandbox` or `read` (/v1/sandboxes), likewise. A host's name is an admin's to see.

Made at most once per SNAPSHOT_TTL_S per view (an admin's, or one tenant's), however many
pages are open: one ask of the scheduler (admins' view only), a few indexed reads of the
ledger in a worker thread (the chart's at most every CHART_TTL_S). Counts by tenant (a scan of
the whole ledger) are not in it: the page asks GET /v1/fleet when an admin is about to flip a
tenant's switch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from tryfleet.scheduler.ledger_reads import LedgerView
from tryfleet.scheduler.records import IN_FLIGHT
from tryfleet.scheduler.sandboxes import SandboxBook
from tryfleet.scheduler.switch_book import SwitchBook

from ..keys import Principal, Scope
from ..ledger import view
from ..routes.fleet import ShortCache
from ..routes.iteration_models import hosts_of, limits_of

SNAPSHOT_TTL_S = 1.0
CHART_TTL_S = 5.0
SUITES_SHOWN = 20
SANDBOXES_SHOWN = 50
MINUTE_S = 60
WINDOW_MIN = 60  # the chart: the last hour, a bar per minute


@dataclass(frozen=True, slots=True)
class Sight:
    """What a caller may see: whose things (None: every tenant's) and which parts."""

    tenant: str | None
    admin: bool
    iterations: bool  # counts, suites, throughput
    sandboxes: bool

    @classmethod
    def of(cls, who: Principal, tenant: str | None) -> Sight:
        return cls(tenant, who.admin, who.may(Scope.READ) or who.may(Scope.BATCH),
                   who.may(Scope.SANDBOX) or who.may(Scope.READ))


def per_minute(rows: list[tuple[int, str, int]], now: float, minutes: int = WINDOW_MIN
               ) -> list[dict[str, Any]]:
    """Every minute of the window, oldest first, with how many ended in it by state (zeros
    where none did)."""
    last = int(now // MINUTE_S) * MINUTE_S
    first = last - (minutes - 1) * MINUTE_S
    points: dict[int, dict[str, int]] = {m: {} for m in range(first, last + 1, MINUTE_S)}
    for at, state, n in rows:
        if at in points:
            points[at][state] = points[at].get(state, 0) + n
    return [{"at": at, "counts": counts} for at, counts in points.items()]


def throughput(ledger: LedgerView, tenant: str | None, now: float,
               minutes: int = WINDOW_MIN) -> dict[str, Any]:
    since = (int(now // MINUTE_S) - minutes + 1) * MINUTE_S
    return {"step_s": MINUTE_S, "since": float(since),
            "points": per_minute(ledger.ended_per_minute(since, tenant), now, minutes)}


def _suite(s: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = s["counts"]
    return {"tenant": s["tenant"], "name": s["name"], "created_at": s["created_at"],
            "counts": counts, "total": sum(counts.values()),
            "queued": counts.get("QUEUED", 0),
            "running": sum(counts.get(p, 0) for p in IN_FLIGHT)}


def _sandbox(rec: Any, admin: bool) -> dict[str, Any]:
    return {"id": rec.id, "tenant": rec.tenant, "image": rec.image, "cpus": rec.cpus,
            "mem_mib": rec.mem_mib, "created_at": rec.created_at,
            "expires_at": rec.expires_at, "key_id": rec.key_id,
            "host": rec.host if admin else None}


def _ledger_parts(ledger: LedgerView, book: SandboxBook, sight: Sight, now: float,
                  chart: Callable[[str | None], dict[str, Any]]) -> dict[str, Any]:
    """The parts read from the ledger file (blocking: run in a worker thread)."""
    out: dict[str, Any] = {}
    if sight.iterations:
        counts = ledger.counts(None, sight.tenant)
        out["counts"] = counts
        out["suites"] = [_suite(s) for s in ledger.suites_progress(sight.tenant, SUITES_SHOWN)]
        out["throughput"] = chart(sight.tenant)
    if sight.sandboxes:
        items, _ = book.page(sight.tenant, "open", SANDBOXES_SHOWN)
        out["sandboxes"] = [_sandbox(r, sight.admin) for r in items]
    return out


async def _fleet(request: Request) -> dict[str, Any]:
    st: dict[str, Any] = await request.app.state.fleet.sched("status", False, False)
    return {"hosts": [h.model_dump() for h in hosts_of(st)], "in_flight": st["in_flight"],
            "limits": {k: v.model_dump() for k, v in limits_of(st).items()}}


class Charts:
    """The chart's minutes of each view, counted again at most every CHART_TTL_S: they change
    by the minute, and counting an hour of a busy fleet's endings is the snapshot's dearest
    read."""

    def __init__(self, ledger: LedgerView, ttl_s: float = CHART_TTL_S) -> None:
        self.ledger, self.ttl_s = ledger, ttl_s
        self._made: dict[str | None, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def __call__(self, tenant: str | None) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            got = self._made.get(tenant)
            if got is not None and now - got[0] < self.ttl_s:
                return got[1]
        made = throughput(self.ledger, tenant, now)
        with self._lock:
            if len(self._made) > 1000:
                self._made.clear()
            self._made[tenant] = (now, made)
        return made


async def make(request: Request, sight: Sight, chart: Callable[[str | None], dict[str, Any]]
               ) -> dict[str, Any]:
    """A snapshot for `sight` (uncached but for the chart)."""
    now = time.time()
    book: SandboxBook = request.app.state.sandboxes
    out: dict[str, Any] = {"as_of": now, "tenant": sight.tenant, "admin": sight.admin}
    out |= await run_in_threadpool(_ledger_parts, view(request), book, sight, now, chart)
    if sight.admin:
        out["fleet"] = await _fleet(request)
        switches: SwitchBook = request.app.state.switch_book
        out["switches"] = [s.to_json() for s in switches.active()]
    return out


class Snapshots:
    """One short cache per sight: every open page of the same view shares a snapshot."""

    def __init__(self, ttl_s: float = SNAPSHOT_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._caches: dict[Sight, ShortCache] = {}
        self._charts: Charts | None = None

    async def get(self, request: Request, sight: Sight) -> bytes:
        cache = self._caches.get(sight)
        if cache is None:
            if len(self._caches) > 1000:  # many tenants came and went: start again
                self._caches.clear()
            cache = self._caches[sight] = ShortCache(self.ttl_s)

        if self._charts is None:
            self._charts = Charts(view(request))
        charts = self._charts

        async def fetch() -> bytes:
            return json.dumps(await make(request, sight, charts), separators=(",", ":")
                              ).encode()

        return await cache.get(fetch)


def snapshots(request: Request) -> Snapshots:
    state = request.app.state
    got: Snapshots | None = getattr(state, "snapshots", None)
    if got is None:
        got = state.snapshots = Snapshots()
    return got


__all__ = ["CHART_TTL_S", "MINUTE_S", "SNAPSHOT_TTL_S", "WINDOW_MIN", "Charts", "Sight",
           "Snapshots", "make", "per_minute", "snapshots", "throughput"]
