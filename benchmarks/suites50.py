"""suites50: 50 suites submitted at once, each a few real-VM iterations, on this host: throttled
(the scheduler as `tryfleet up` runs it: host capacity, host pressure, fair share across
suites) and unthrottled (everything admitted at once, one worker per suite, as a naive harness
with 50 workers would: no capacity or pressure check).

Both modes go through the same path (a Ray started for the run, the real node agent on libvirt
with its warm pool and snapshot restore, a scheduler with its ledger in a temp dir); only the
scheduler's admission settings differ. The unthrottled mode is bounded so it cannot take the
machine down: guest memory is small (256 MiB), the scheduler still refuses to promise more
memory than the host has, every command has a timeout, each mode has a deadline, and a guard
flips the kill switch when memory runs low or memory stalls pass a limit (see hostwatch.py).
The throttled mode runs first, and each waits for CPU pressure to settle before it starts.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import print_table
from .hostwatch import Guard, HostWatch, settle
from .onray import local_ray, start_scheduler, wait_terminal
from .suitestats import MODES, chart, summarize
from .vmbench import SETUP_HINT

CHART = chart
MEM_MIB = 256
ITERATION_TIMEOUT_S = 60.0
POLL_S = 0.5
TEST_SCRIPT = '''
import json, sqlite3, sys, zlib

def test_json():
    assert json.loads(json.dumps({"suite": sys.argv[1]}))["suite"] == sys.argv[1]

def test_sqlite():
    db = sqlite3.connect(":memory:")
    db.execute("create table t (x)")
    db.executemany("insert into t values (?)", [(i,) for i in range(2000)])
    assert db.execute("select sum(x) from t").fetchone()[0] == 1999000

def test_zlib():
    data = bytes(range(256)) * 200
    assert zlib.decompress(zlib.compress(data)) == data

for name, fn in list(globals().items()):
    if name.startswith("test_"):
        fn()
print("3 passed")
'''


@dataclass(frozen=True, slots=True)
class Size:
    suites: int
    per_suite: int
    deadline_s: float  # per mode: then the kill switch
    settle_s: float  # at most this long waiting for cpu pressure to settle
    warmup: int  # untimed iterations first, so saved guests exist before either mode


DEFAULT = Size(suites=50, per_suite=3, deadline_s=200.0, settle_s=40.0, warmup=2)
QUICK = Size(suites=4, per_suite=1, deadline_s=20.0, settle_s=2.0, warmup=0)


def suite_name(i: int) -> str:
    return f"suite-{i:02d}"


def iterations(i: int, per_suite: int) -> list[dict[str, Any]]:
    return [{"image": "base", "command": ["python3", "/root/test_suite.py", suite_name(i)],
             "files": {"/root/test_suite.py": TEST_SCRIPT}, "cpus": 1, "mem_mib": MEM_MIB,
             "timeout_s": ITERATION_TIMEOUT_S, "id": f"{suite_name(i)}-{k}"}
            for k in range(per_suite)]


def scheduler_args(mode: str, suites: int, host_cpus: int) -> dict[str, Any]:
    """The scheduler's settings per mode: throttled is its defaults."""
    if mode == "throttled":
        return {}
    never = dict.fromkeys(("cpu_high", "cpu_low", "memory_high", "memory_low", "io_high",
                           "io_low", "mem_used_high", "mem_used_low"), 1e9)
    return {"pressure": never, "cpu_overcommit": max(1.0, suites / host_cpus),
            "suite_cap": 1}


def describe(args: dict[str, Any]) -> str:
    if not args:
        return "defaults (capacity at 1 vcpu per core, pressure checks on, fair share)"
    return (f"cpu overcommit {args['cpu_overcommit']:g}x, pressure checks off, "
            f"{args['suite_cap']} at a time per suite")


def _wait_idle(node: Any, timeout_s: float = 90.0) -> None:
    """Until the node agent runs no iteration (pooled VMs may stay)."""
    deadline = time.monotonic() + timeout_s
    while _status(node).running and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _status(node: Any) -> Any:
    """The HostStatus of the one host a node agent serves."""
    import ray

    from tryfleet.wire import HostStatus, unpack_map

    (status,) = unpack_map(HostStatus, ray.get(node.status_all.remote())).values()
    return status


def run_mode(mode: str, size: Size, tmp: Path, node: Any) -> dict[str, Any]:
    import ray

    ledger = tmp / f"{mode}.db"
    args = scheduler_args(mode, size.suites, os.cpu_count() or 1)
    sched = start_scheduler(ledger, 1, **args)
    warm = size.warmup if mode == "throttled" else 0  # slots and pool made once, for both
    if warm:
        ray.get(sched.submit.remote(iterations(99, warm), "warmup", "bench"))
        wait_terminal(sched, warm, time.monotonic() + 300, poll_s=POLL_S)
    _wait_idle(node)
    settled = settle(size.settle_s)
    stops: list[str] = []

    def kill_switch(reason: str) -> None:
        stops.append(reason)
        ray.get(sched.cancel.remote(everything=True))

    total = size.suites * size.per_suite + warm
    with HostWatch(Guard(), kill_switch) as watch:
        t0 = time.time()
        ray.get([sched.submit.remote(iterations(i, size.per_suite), suite_name(i), "bench")
                 for i in range(size.suites)])
        if not wait_terminal(sched, total, time.monotonic() + size.deadline_s,
                             poll_s=POLL_S) and not stops:
            kill_switch(f"deadline of {size.deadline_s:g} s passed")
            wait_terminal(sched, total, time.monotonic() + 60, poll_s=POLL_S)
        stopped_at = time.time()
    ray.kill(sched, no_restart=True)
    _wait_idle(node)
    with closing(sqlite3.connect(ledger)) as db:
        rows = db.execute("SELECT suite, state, ended_at FROM iterations "
                          "WHERE suite LIKE 'suite-%'").fetchall()
        failures = db.execute(
            "SELECT id, state, exit_code, error, stderr FROM iterations WHERE suite LIKE "
            "'suite-%' AND state IN ('FAILED', 'INFRA_ERROR', 'TIMED_OUT') LIMIT 5").fetchall()
    out = summarize(rows, t0, stopped_at, size.suites, watch.peaks)
    out["failures"] = [{"id": i, "state": st, "exit_code": code, "error": err,
                        "stderr": (bytes(se or b"")[-300:]).decode(errors="replace")}
                       for i, st, code, err, se in failures]
    out.update(aborted=stops[0] if stops else None, cpu_psi_at_start=round(settled, 2),
               scheduler=describe(args))
    return out


def _node(start_node_actor: Any) -> Any:
    """This host's node agent, for the run; exits with what to do when it cannot run VMs."""
    from tryfleet.nodeagent import default_data_dir

    try:
        node = start_node_actor(str(default_data_dir()), socket.gethostname(), detached=False)
        images = _status(node).images
    except Exception as err:  # no libvirtd, no permission: say what to do
        sys.exit(f"suites50 needs libvirtd and the base image: {err}\n{SETUP_HINT}")
    if "base" not in images:
        sys.exit(f"suites50 needs the base image, and {default_data_dir()} has none; "
                 f"{SETUP_HINT}")
    return node


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = QUICK if args.quick else DEFAULT
    modes: dict[str, Any] = {}
    with local_ray("bench-suites50-") as tmp:
        import ray

        from tryfleet.nodeagent.actor import start_node_actor

        node = _node(start_node_actor)
        for mode in MODES:
            modes[mode] = run_mode(mode, size, tmp, node)
        ray.get(node.shutdown.remote())
    return report(size, modes)


def report(size: Size, modes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    th, un = modes["throttled"], modes["unthrottled"]
    result = {
        "suites": size.suites, "iterations_per_suite": size.per_suite,
        "iteration": f"1 vcpu, {MEM_MIB} MiB, python3 running 3 small tests, "
                     f"timeout {ITERATION_TIMEOUT_S:g} s",
        "deadline_s": size.deadline_s, **modes,
        "targets_met": (th["failed"] == 0 and th["timed_out"] == 0 and th["cancelled"] == 0
                        and th["cpu_psi_some_avg10_max"] < un["cpu_psi_some_avg10_max"]),
    }
    show = lambda v: "-" if v is None else str(v)  # noqa: E731
    rows = [(label, f"{show(th[key])}  |  {show(un[key])}") for label, key in (
        ("failed", "failed"), ("timed out", "timed_out"), ("cancelled", "cancelled"),
        ("succeeded", "succeeded"),
        ("cpu PSI some avg10 max (%)", "cpu_psi_some_avg10_max"),
        ("cpu PSI some avg10 mean (%)", "cpu_psi_some_avg10_mean"),
        ("mem PSI some avg10 max (%)", "mem_psi_some_avg10_max"),
        ("host memory peak (MiB)", "host_mem_peak_mib"),
        ("VMs at once, peak", "vms_peak"),
        ("iterations/min (succeeded)", "iterations_per_min"),
        ("Jain fairness across suites", "jain_fairness"),
        ("wall time (s)", "elapsed_s"),
        ("stopped by", "aborted"))]
    for mode, m in modes.items():
        for f in m.get("failures", []):
            print(f"{mode}: {f['id']} {f['state']} exit {f['exit_code']}: "
                  f"{f['error'] or f['stderr'].strip()[-200:]}")
    print_table(f"suites50: {size.suites} suites x {size.per_suite} real-VM iterations, "
                "submitted at once (throttled | unthrottled)", [
                    *rows, ("targets (throttled: 0 failed, 0 timed out, less cpu PSI)",
                            "met" if result["targets_met"] else "MISSED")])
    return result
