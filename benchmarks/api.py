"""api: the HTTP front door on a real fleet (apifleet.py: its own, or `--attach DATA_DIR`).

- exec: `true` in one open sandbox, POST /v1/sandboxes/{id}/exec over HTTP (a keep-alive
  client, a sandbox-scope key), interleaved with the same command over the in-cluster path: the
  node agent's `sandbox_exec` called through Ray from this process as the gateway calls it
  (FleetCalls). The difference of the p50s is what the front door adds.
- sandbox create: POST /v1/sandboxes of the warm pool's size, then DELETE, one at a time,
  alternating with the same through the scheduler's open_sandbox in-cluster; before
  each create, the node agent's pool has a ready VM again (waited for, read from the agent) and
  the scheduler sees the host under no pressure (waited for, up to 30 s). A create that did not
  take a pooled VM (its VM is not one the node agent held before) is a miss, one begun on a
  pressured host (where the scheduler waits for room) is "pressured": both reported apart, not
  in the figures.
- status: GET /v1/fleet, the fleet's status (the API's "status"; admin key), from several client
  processes, each one keep-alive httpx client sending back to back for a fixed time; also GET
  /v1/sandboxes/{id}, the status of one sandbox (a ledger read per request, no cache).
- SSE: POST /v1/sandboxes/{id}/exec/stream of `echo hi`: time from sending to the first event
  (`started`), to the first `stdout` event and to `exit`.

Every gateway variant (apifleet.GatewayVariant) is measured in turn in the same run; the top
level of the result is the first (the gateway as `tryfleet up` runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .apiaudit import UNAUDITED, audit_cost
from .apifleet import DEFAULT, GUEST, BenchFleet, GatewayVariant, fleet, machine_load
from .apiload import load, stats
from .common import percentile, print_table

TARGET_EXEC_GAP_MS = 3.0  # HTTP p50 within this of the in-cluster p50
TARGET_CREATE_P50_MS = 15.0
TARGET_STATUS_PER_S = 1000.0
STATUS_PATH = "/v1/fleet"
POOL_READY = 1  # warm VMs of GUEST's kind the node agent keeps


@dataclass(frozen=True, slots=True)
class Size:
    exec_pairs: int
    creates: int
    sse: int
    status_s: float  # each status load lasts this long
    procs: int  # client processes sending status requests
    pool_wait_s: float  # at most this long for the pool to be ready again
    pressure_wait_s: float = 30.0  # and for the host to be under no pressure


FULL = Size(exec_pairs=300, creates=30, sse=30, status_s=10.0, procs=4, pool_wait_s=120.0)
QUICK = Size(exec_pairs=20, creates=3, sse=5, status_s=2.0, procs=4, pool_wait_s=120.0)


def chart(result: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [("HTTP: exec true p50 (ms)", result["exec_true_p50_ms"]["http"]),
            ("in-cluster: exec true p50 (ms)", result["exec_true_p50_ms"]["in_cluster"]),
            ("HTTP: sandbox create, pool hit p50 (ms)", result["sandbox_create_p50_ms"]),
            ("in-cluster: sandbox create, pool hit p50 (ms)",
             result["sandbox_create_ms"]["in_cluster"].get("p50")),
            ("HTTP: first SSE event p50 (ms)", result["sse_first_event_ms"]),
            ("HTTP: status requests (/s)", result["status_requests_per_s"])]


CHART = chart


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """(event, data) of each server-sent event as its closing blank line arrives; comments
    (keep-alives) and events without data are skipped, data parsed as JSON."""
    kind, data = "message", None
    for line in lines:
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data = (data + "\n" if data is not None else "") + line[5:].removeprefix(" ")
        elif line == "":
            if data is not None:
                yield kind, json.loads(data)
            kind, data = "message", None


def verdicts(figures: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target: its figure, the bound, and whether the figure meets it."""
    gap = figures["exec_true_p50_ms"]["http_minus_in_cluster"]
    create, rate = figures["sandbox_create_p50_ms"], figures["status_requests_per_s"]
    return {
        "exec_true_http_minus_in_cluster_p50_ms": {
            "value": gap, "target": f"<= {TARGET_EXEC_GAP_MS:g}",
            "met": gap is not None and gap <= TARGET_EXEC_GAP_MS},
        "sandbox_create_p50_ms": {
            "value": create, "target": f"<= {TARGET_CREATE_P50_MS:g}",
            "met": create is not None and create <= TARGET_CREATE_P50_MS},
        "status_requests_per_s": {
            "value": rate, "target": f">= {TARGET_STATUS_PER_S:g}",
            "met": rate is not None and rate >= TARGET_STATUS_PER_S},
    }


# ---- the run ---------------------------------------------------------------------------------
def variants(args: argparse.Namespace) -> tuple[GatewayVariant, ...]:
    """The gateway configurations to measure, side by side in one fleet: the one `tryfleet up`
    runs first (the top level of the result), then any other the arguments ask for. The
    unaudited gateway is started beside them for the audit's cost alone (apiaudit.py)."""
    return (DEFAULT,)


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = QUICK if args.quick else FULL
    load_before = machine_load()
    per: dict[str, dict[str, Any]] = {}
    measured = variants(args)
    attach = getattr(args, "attach", None)
    started = measured if attach else (*measured, UNAUDITED)  # a fleet's own: no second one
    cost: dict[str, Any] | None = None
    with fleet(attach, started, POOL_READY) as bench:
        for variant in measured:
            per[variant.name] = measure(bench, variant.name, size)
        if not attach:
            cost = audit_cost_on(bench, measured[0].name, size)
    first = measured[0].name
    result: dict[str, Any] = {
        "gateway": first, **per[first], "targets": verdicts(per[first]),
        "status_path": STATUS_PATH, "size": asdict(size), "fleet": bench.report,
        "load": {"before": load_before, "after": machine_load()},
        "guest": GUEST, "audit_cost": cost,
    }
    if cost is not None:
        result["targets"]["audit_cost_p50_ms"] = {
            "value": cost["audit_cost_p50_ms"], "target": f"<= {cost['target_ms']:g}",
            "met": cost["met"]}
    if len(per) > 1:
        result["variants"] = {n: {**f, "targets": verdicts(f)} for n, f in per.items()}
    _print(result, per)
    return result


def measure(bench: BenchFleet, variant: str, size: Size) -> dict[str, Any]:
    """Every figure of one gateway."""
    import httpx

    url, pid = bench.urls[variant], bench.gateway_pids.get(variant)

    with httpx.Client(base_url=url, timeout=120) as http:
        creates = create_samples(http, bench, size)
        sid, host = open_sandbox(http, bench)
        try:
            wait_warm(bench, size.pool_wait_s)  # its refill done before anything is timed
            exec_ = exec_samples(http, bench, sid, host, size.exec_pairs)
            sse = sse_samples(http, bench, sid, size.sse)
            status = load(url, STATUS_PATH, bench.admin_key, size.procs, size.status_s, pid)
            one = load(url, f"/v1/sandboxes/{sid}", bench.sandbox_key, size.procs,
                       size.status_s, pid)
        finally:
            http.delete(f"/v1/sandboxes/{sid}", headers=bench.sandbox_key)
    return {**exec_, **creates, **sse,
            "status_requests_per_s": status["requests_per_s"], "status": status,
            "sandbox_get": one}


def audit_cost_on(bench: BenchFleet, variant: str, size: Size) -> dict[str, Any]:
    """What the audit costs exec `true`, on a sandbox of its own, and status requests/s."""
    import httpx

    with httpx.Client(base_url=bench.urls[variant], timeout=120) as http:
        sid, _ = open_sandbox(http, bench)
        try:
            cost = audit_cost(bench, variant, sid, size.exec_pairs)
        finally:
            http.delete(f"/v1/sandboxes/{sid}", headers=bench.sandbox_key)
    off = UNAUDITED.name
    status = load(bench.urls[off], STATUS_PATH, bench.admin_key, size.procs, size.status_s,
                  bench.gateway_pids.get(off))
    return {**cost, "status_requests_per_s_audit_off": status["requests_per_s"],
            "status_audit_off": status}


def open_sandbox(http: Any, bench: BenchFleet) -> tuple[str, str]:
    """A sandbox for the exec and SSE samples: (its id, its host, as an admin sees it)."""
    r = http.post("/v1/sandboxes", json={**GUEST, "timeout_s": 1800, "wait_s": 120},
                  headers=bench.sandbox_key)
    if r.status_code != 201:
        raise RuntimeError(f"create: {r.status_code} {r.text[:500]}")
    sid = r.json()["id"]
    return sid, http.get(f"/v1/sandboxes/{sid}", headers=bench.admin_key).json()["host"]


def wait_warm(bench: BenchFleet, within_s: float) -> int:
    """Ready pooled VMs once there is one (or within_s passed)."""
    deadline = time.monotonic() + within_s
    while (ready := sum(bench.pool_ready().values())) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    return ready


def wait_calm(http: Any, bench: BenchFleet, within_s: float) -> bool:
    """Whether the scheduler sees our hosts under no pressure (waited for up to within_s): a
    create on a pressured host waits for room, which is admission, not the pool."""
    deadline = time.monotonic() + within_s
    while True:
        hosts = http.get("/v1/fleet", headers=bench.admin_key).json()["hosts"]
        if not any(h["pressured"] for h in hosts if h["host"] in bench.nodes):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


class InCluster:
    """The fleet's actors called from this process as the gateway calls them (FleetCalls),
    each call run to its end on an event loop of this process's own."""

    def __init__(self) -> None:
        from tryfleet.gateway.calls import FleetCalls

        self.calls, self.loop = FleetCalls(), asyncio.new_event_loop()

    def sched(self, method: str, *args: Any) -> Any:
        return self.loop.run_until_complete(self.calls.sched(method, *args))

    def node(self, host: str, method: str, *args: Any) -> Any:
        return self.loop.run_until_complete(self.calls.node(host, method, *args))

    def close(self) -> None:
        self.loop.close()


def create_samples(http: Any, bench: BenchFleet, size: Size) -> dict[str, Any]:
    """Creates over HTTP, and in-cluster (the scheduler's open_sandbox, as the gateway calls
    it) alternately; those that took a pooled VM on a calm host count, misses and creates on
    a pressured host (the scheduler waits for room there) are reported apart."""
    ray_ = InCluster()

    def over_http() -> tuple[float, str]:
        t0 = time.perf_counter()
        r = http.post("/v1/sandboxes", json={**GUEST, "timeout_s": 300, "wait_s": 120},
                      headers=bench.sandbox_key)
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 201:
            raise RuntimeError(f"create: {r.status_code} {r.text[:500]}")
        vm = str(ray_.sched("get_sandbox", r.json()["id"])["vm"])  # HTTP does not show it
        http.delete(f"/v1/sandboxes/{r.json()['id']}", headers=bench.sandbox_key)
        return ms, vm

    def in_cluster() -> tuple[float, str]:
        t0 = time.perf_counter()
        rec = ray_.sched("open_sandbox", "bench", GUEST["image"], GUEST["cpus"],
                         GUEST["mem_mib"], None, 300.0, {}, "", "", {}, 120.0)
        ms = (time.perf_counter() - t0) * 1000
        ray_.sched("close_sandbox", rec["id"], None)
        return ms, str(rec["vm"])

    kept: dict[str, list[float]] = {}
    why: list[dict[str, Any]] = []  # each one not counted, and how long the run waited
    try:
        for i in range(size.creates * 2):
            path, fn = (("http", over_http), ("in_cluster", in_cluster))[i % 2]
            w0 = time.monotonic()
            wait_warm(bench, size.pool_wait_s)
            calm = wait_calm(http, bench, size.pressure_wait_s)
            waited_s = round(time.monotonic() - w0, 1)
            before = bench.vms()  # read last: a fill may end meanwhile
            ms, vm = fn()
            kind = create_kind(vm, before, calm)
            kept.setdefault(f"{path} {kind}", []).append(ms)
            if kind != "hit":
                why.append({"path": path, "kind": kind, "ms": round(ms, 1),
                            "waited_s": waited_s})
    finally:
        ray_.close()
    http_, ray_hits = stats(kept.get("http hit", [])), stats(kept.get("in_cluster hit", []))
    return {"sandbox_create_p50_ms": http_.get("p50"),
            "sandbox_create_ms": {"http": http_, "in_cluster": ray_hits},
            "sandbox_create_pool_misses": sum(1 for w in why if w["kind"] == "miss"),
            "sandbox_create_pressured": sum(1 for w in why if w["kind"] == "pressured"),
            "sandbox_create_not_counted": why}


def create_kind(vm: str, held_before: set[str], calm: bool) -> str:
    """A pool miss when the sandbox's VM is not one the node agent held before the create
    (with no sandbox open then, those are its pooled VMs: a miss restores or boots a new
    one); else "pressured" when the host was under pressure as it began; else a hit."""
    if vm not in held_before:
        return "miss"
    return "hit" if calm else "pressured"


def exec_samples(http: Any, bench: BenchFleet, sid: str, host: str, pairs: int
                 ) -> dict[str, Any]:
    """`true` over HTTP and in-cluster, alternately (which goes first alternates too)."""
    from tryfleet.wire import ExecReply, ExecRequest, pack, unpack

    ray_, req = InCluster(), pack(ExecRequest(("true",)))

    def in_cluster() -> float:
        t0 = time.perf_counter()
        reply = unpack(ExecReply, ray_.node(host, "sandbox_exec", sid, req))
        ms = (time.perf_counter() - t0) * 1000
        if reply.exit_code != 0:
            raise RuntimeError(f"in-cluster `true` exited {reply.exit_code}")
        return ms

    def over_http() -> float:
        t0 = time.perf_counter()
        r = http.post(f"/v1/sandboxes/{sid}/exec", json={"argv": ["true"]},
                      headers=bench.sandbox_key)
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200 or r.json()["exit_code"] != 0:
            raise RuntimeError(f"HTTP `true`: {r.status_code} {r.text[:500]}")
        return ms

    try:
        for _ in range(5):  # connections, caches, the guest's page cache
            in_cluster(), over_http()
        times: dict[str, list[float]] = {"http": [], "in_cluster": []}
        for i in range(pairs):
            order = (("http", over_http), ("in_cluster", in_cluster))
            for name, fn in order if i % 2 else order[::-1]:
                times[name].append(fn())
    finally:
        ray_.close()
    http_p50, ray_p50 = percentile(times["http"], 50), percentile(times["in_cluster"], 50)
    paired = [h - r for h, r in zip(times["http"], times["in_cluster"], strict=True)]
    return {"exec_true_p50_ms": {"http": round(http_p50, 2),
                                 "in_cluster": round(ray_p50, 2),
                                 "http_minus_in_cluster": round(http_p50 - ray_p50, 2)},
            "exec_true_ms": {k: stats(v) for k, v in times.items()},
            # each HTTP call minus the in-cluster call next to it: less swayed by a load
            # that drifts over the run than the difference of the two p50s
            "exec_true_paired_gap_p50_ms": round(percentile(paired, 50), 2)}


def sse_samples(http: Any, bench: BenchFleet, sid: str, n: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"first_event": [], "first_stdout": [], "exit": []}
    firsts = set()
    for _ in range(n):
        t0 = time.perf_counter()
        seen: dict[str, float] = {}
        with http.stream("POST", f"/v1/sandboxes/{sid}/exec/stream",
                         json={"argv": ["echo", "hi"]}, headers=bench.sandbox_key) as r:
            if r.status_code != 200:
                raise RuntimeError(f"stream: {r.status_code} {r.read()[:500]!r}")
            for kind, data in sse_events(r.iter_lines()):
                ms = (time.perf_counter() - t0) * 1000
                if not seen:
                    seen["first_event"] = ms
                    firsts.add(kind)
                if kind == "stdout":
                    seen.setdefault("first_stdout", ms)
                if kind in ("exit", "error"):
                    seen["exit"] = ms
                    if kind == "error" or data.get("exit_code") != 0:
                        raise RuntimeError(f"stream ended with {kind} {data}")
                    break
        for k, v in seen.items():
            times[k].append(v)
    first = stats(times["first_event"])
    return {"sse_first_event_ms": first.get("p50"), "sse_first_event_kinds": sorted(firsts),
            "sse_ms": {k: stats(v) for k, v in times.items()}}


# ---- status load from several processes ------------------------------------------------------
# ---- the table -------------------------------------------------------------------------------
def _print(result: Mapping[str, Any], per: Mapping[str, Mapping[str, Any]]) -> None:
    for name, f in per.items():
        ex, met = f["exec_true_ms"], verdicts(f)
        print_table(f"api ({name} gateway): {result['size']}", [
            ("exec true p50/p90/p99 HTTP",
             f"{ex['http']['p50']} / {ex['http']['p90']} / {ex['http']['p99']} ms"),
            ("exec true p50/p90/p99 in-cluster", f"{ex['in_cluster']['p50']} / "
             f"{ex['in_cluster']['p90']} / {ex['in_cluster']['p99']} ms"),
            ("HTTP minus in-cluster, p50", _verdict(met, "exec_true_http_minus_in_cluster_p50_ms",
                                                    "ms")),
            ("  paired gap p50", f"{f['exec_true_paired_gap_p50_ms']} ms"),
            ("sandbox create (pool hit) p50", _verdict(met, "sandbox_create_p50_ms", "ms")),
            ("  in-cluster p50", f"{f['sandbox_create_ms']['in_cluster'].get('p50')} ms"),
            ("  hits (HTTP) / misses / pressured", f"{f['sandbox_create_ms']['http']['n']} / "
             f"{f['sandbox_create_pool_misses']} / {f['sandbox_create_pressured']}"),
            (f"status {STATUS_PATH}", _verdict(met, "status_requests_per_s", "requests/s")),
            ("  errors", str(f["status"]["errors"])),
            ("  CPU per request: gateway / client",
             f"{f['status']['gateway_cpu_ms_per_request']} / "
             f"{f['status']['client_cpu_ms_per_request']} ms"),
            ("GET /v1/sandboxes/{id}", f"{f['sandbox_get']['requests_per_s']} requests/s"),
            ("first SSE event p50", f"{f['sse_first_event_ms']} ms "
                                    f"({', '.join(f['sse_first_event_kinds'])})"),
            ("first stdout event / exit p50", f"{f['sse_ms']['first_stdout'].get('p50')} / "
                                              f"{f['sse_ms']['exit'].get('p50')} ms"),
        ])
    cost = result["audit_cost"]
    if cost is not None:
        print(f"audit cost, exec true p50: on {cost['exec_true_p50_ms_audit_on']} ms, off "
              f"{cost['exec_true_p50_ms_audit_off']} ms: {cost['audit_cost_p50_ms']:+} ms "
              f"(paired {cost['audit_cost_paired_p50_ms']:+} ms; target <= "
              f"{cost['target_ms']:g}: {'met' if cost['met'] else 'missed'}); status "
              f"{STATUS_PATH} with the audit off: {cost['status_requests_per_s_audit_off']} "
              f"requests/s ({cost['status_audit_off']['gateway_cpu_ms_per_request']} ms of "
              "gateway CPU each)")
    print(f"load before: {result['load']['before']['loadavg']}, after: "
          f"{result['load']['after']['loadavg']}; leftover domains: "
          f"{result['fleet'].get('leftover_domains', 'n/a')}")


def _verdict(met: Mapping[str, Mapping[str, Any]], key: str, unit: str) -> str:
    v = met[key]
    return f"{v['value']} {unit} (target {v['target']}: {'met' if v['met'] else 'missed'})"
