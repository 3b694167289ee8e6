"""The gateway's Prometheus metrics, and /metrics: the whole fleet's in one scrape.

The gateway counts its own (API requests by route template, method and status, with their
durations; authorization denials by reason) in this process's default registry. At scrape
time it asks the scheduler (`Scheduler.metrics`), which answers with its own process's, the
fleet as its engine sees it (queue, admission waits, hosts, pools, suites, switches), and
each node agent's (start-time and exec histograms, egress), gathered at once within a
deadline. The families are merged by name; a process met twice (a fleet in one process, as in
tests) is counted once; of other processes only `tryfleet_` families are kept (their
`process_` and `python_` ones would clash with the gateway's); of a family another process
served, the gateway's own copy is left out. A scheduler that does not answer in time is
`tryfleet_scheduler_up 0`, and the scrape still answers.

So a process's default registry holds what it measures: a metric is registered (and its
label values set to 0) by the part that measures it when it starts, not when its module is
imported, since other processes import it too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from starlette.types import Scope

from tryfleet.errors import Frozen, PolicyDenied, QuotaExceeded
from tryfleet.wire import Exposition, unpack

# no `_created` series beside every counter and histogram
disable_created_metrics()  # type: ignore[no-untyped-call]
log = logging.getLogger("tryfleet.gateway")
SCHEDULER_TIMEOUT_S = 5.0  # the whole answer of the scheduler's side
NODE_TIMEOUT_S = 2.0  # each node agent's, asked by the scheduler
OURS = ("tryfleet_", "process_", "python_")  # the gateway's own families served
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Why a request was refused for who is calling: no key; a key unknown, revoked or expired; a
# scope it lacks; another tenant's; the tenant's policy; its quota; a kill switch.
DENIAL_REASONS = ("no_key", "bad_key", "scope", "tenant", "policy", "quota", "frozen")

REQUESTS = Counter("tryfleet_api_requests", "API requests answered, by route template, method "
                   "and status", ["route", "method", "status"])
DURATION = Histogram("tryfleet_api_request_duration_seconds", "Time from a request's arrival "
                     "to the last byte of its answer (streams: their whole length), by route "
                     "template and method", ["route", "method"],
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                              2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
DENIALS = Counter("tryfleet_authorization_denials", "Requests refused for who is calling, by "
                  "reason: " + ", ".join(DENIAL_REASONS), ["reason"])


def serving() -> None:
    """This process serves the API: its denial counters start at 0 for every reason (not on
    import: a process that only imports this module serves none of them)."""
    for reason in DENIAL_REASONS:
        DENIALS.labels(reason)


def denied(reason: str) -> None:
    """Count a refusal (reason: one of DENIAL_REASONS)."""
    DENIALS.labels(reason if reason in DENIAL_REASONS else "policy").inc()


def denied_for(err: Exception) -> None:
    """Count the error if it is a refusal by policy, quota or kill switch."""
    if isinstance(err, QuotaExceeded):
        denied("quota")
    elif isinstance(err, PolicyDenied):
        denied("frozen" if isinstance(err, Frozen) else "policy")


def measured(scope: Scope, status: int, seconds: float) -> None:
    """One HTTP request counted and timed by the route template it matched
    (`/v1/sandboxes/{sid}/exec`, never the path itself: ids are no labels), "unmatched" when
    it matched none. Called by the gateway's outermost middleware (app.RequestIds) as each
    request ends, its own refusals included."""
    path = getattr(scope.get("route"), "path", None)
    route = path if isinstance(path, str) else "unmatched"
    method = scope.get("method", "")
    method = method if method in METHODS else "other"
    REQUESTS.labels(route, method, str(status)).inc()
    DURATION.labels(route, method).observe(seconds)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class _Merged:
    """Metric families merged by name; a sample met twice (same name and labels) kept once."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}
        self._seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()

    def add(self, metrics: Iterable[Metric]) -> None:
        for m in metrics:
            fam = self.families.get(m.name)
            if fam is None:
                fam = self.families[m.name] = Metric(m.name, m.documentation, m.type, m.unit)
            elif fam.type != m.type:
                log.warning("metric %s is a %s in one process and a %s in another: the "
                            "latter left out", m.name, fam.type, m.type)
                continue
            for s in m.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                if key not in self._seen:
                    self._seen.add(key)
                    fam.samples.append(s)

    def add_remote(self, text: bytes) -> None:
        """Another process's families: only `tryfleet_` ones."""
        self.add(m for m in text_string_to_metric_families(text.decode())
                 if m.name.startswith("tryfleet_"))

    def add_local(self, metrics: Iterable[Metric]) -> None:
        """This process's default registry, after the others: of a family another process
        served, this process's copy (a module it imported, not what it measures) is left out;
        so is what libraries in this process registered there (only OURS)."""
        served = set(self.families)
        self.add(m for m in metrics if m.name not in served and m.name.startswith(OURS))

    def exposition(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self.families.values()))
        return generate_latest(registry)


async def exposition(fleet: Any, audit: Any) -> bytes:
    """The whole fleet's metrics in Prometheus's text format (see the module's docstring).
    fleet: the app's FleetCalls (or a stand-in); audit: its Audit, or None."""
    merged = _Merged()
    pids = {os.getpid()}
    up = 0
    try:
        got = await asyncio.wait_for(fleet.sched("metrics", NODE_TIMEOUT_S), SCHEDULER_TIMEOUT_S)
        if got["pid"] not in pids:
            pids.add(got["pid"])
            merged.add_remote(got["shared"])
        merged.add_remote(got["fleet"])
        for packed in got["nodes"]:
            node = unpack(Exposition, packed)
            if node.pid not in pids:
                pids.add(node.pid)
                merged.add_remote(node.text)
        up = 1
    except Exception as err:  # the gateway's own metrics still answer
        log.warning("/metrics without the scheduler's side: %s", err or type(err).__name__)
    merged.add_local(REGISTRY.collect())
    merged.add(_own(up, audit, await _head_seq(audit)))
    return merged.exposition()


async def _head_seq(audit: Any) -> int | None:
    if audit is None:
        return None
    try:
        return int(await asyncio.to_thread(audit.head_seq))
    except Exception as err:  # no trail yet, or it cannot be read: no sample
        log.warning("audit head for /metrics: %s", err)
        return None


def _own(scheduler_up: int, audit: Any, head: int | None) -> Iterator[Metric]:
    yield GaugeMetricFamily("tryfleet_scheduler_up", "1 when the scheduler answered this "
                            "scrape, else 0 (then only the gateway's own metrics are here)",
                            value=scheduler_up)
    if head is not None:
        yield GaugeMetricFamily("tryfleet_audit_head_seq", "Sequence number of the audit "
                                "trail's last record (its chain head)", value=head)
    if audit is not None:
        appends = CounterMetricFamily("tryfleet_audit_appends", "Records appended to the "
                                      "audit trail, by writer", labels=["writer"])
        appends.add_metric(["gateway"], audit.appended)
        yield appends


__all__ = ["DENIALS", "DENIAL_REASONS", "DURATION", "REQUESTS", "denied",
           "denied_for", "exposition", "serving"]
