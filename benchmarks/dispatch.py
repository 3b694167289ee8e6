"""dispatch: iterations per second through the real scheduler vs one Ray task per iteration.

Ours: the real scheduler (scheduler.service.Scheduler as its Ray actor, its ledger on disk in a
temp dir) places every iteration on simulated hosts (nodeagent/simhost.py: one node-agent actor
serves them all through the node protocol real hosts speak, no VMs; an attempt is a seeded boot
delay then a seeded exec delay). Timed from the
submit of all iterations to the last terminal result committed in the ledger.
Baseline: the same iterations as one Ray task each (`num_cpus=1`, as the iteration asks) on the
same Ray, sleeping the same per-iteration delays; also with a fractional request that lets Ray
run more of them at once on this machine's cpus.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from .common import print_table
from .onray import local_ray, start_scheduler, wait_terminal

SEED = 20240611
HOST_CPUS = 16  # a simulated host: 16 vcpus, 32 GiB (as in binpack)
HOST_MEM_MIB = 32768
ITERATION = {"cpus": 1, "mem_mib": 512}
RAY_FRACTION = 0.25  # the oversubscribed baseline: four tasks per Ray cpu
WARMUP = 200
TARGET_ITERATIONS_PER_S = 1000.0
TARGET_SPEEDUP = 4.0
DONE_POLL_S = 0.05

CHART = [
    ("tryfleet: throughput (iterations/s)", "iterations_per_s"),
    ("Ray tasks, num_cpus=1: throughput (iterations/s)", "ray_native_iterations_per_s"),
    (f"Ray tasks, num_cpus={RAY_FRACTION}: throughput (iterations/s)",
     "ray_native_oversubscribed_iterations_per_s"),
    ("tryfleet: placement p50 (ms per decision)", "placement_p50_ms"),
    ("tryfleet: placement p99 (ms per decision)", "placement_p99_ms"),
]


def _delays() -> Any:
    from tryfleet.nodeagent.simhost import Delays

    return Delays(seed=SEED, boot_median_ms=5.0, boot_sigma=0.5, exec_median_ms=5.0,
                  exec_sigma=0.5)


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(n)]


def _wire(ids: list[str]) -> list[dict[str, Any]]:
    return [{"image": "base", "command": ["sim"], "id": iid, **ITERATION} for iid in ids]


def _wait_done(sched: Any, suite: str, n: int, timeout_s: float) -> None:
    if not wait_terminal(sched, n, time.monotonic() + timeout_s, suite, DONE_POLL_S):
        raise TimeoutError(f"suite {suite}: not all {n} iterations ended within {timeout_s:g}s")


def _ours(n: int, hosts: int, tmp: Path, timeout_s: float) -> dict[str, Any]:
    import ray

    from tryfleet.nodeagent.simhost import SimHostSpec, start_sim_hosts

    specs = [SimHostSpec(f"sim{i:03d}", cpus=HOST_CPUS, mem_mib=HOST_MEM_MIB)
             for i in range(hosts)]
    sim = start_sim_hosts("bench", specs, _delays())
    sched = start_scheduler(tmp / "ledger.db", hosts)
    warm = _ids("warm", WARMUP)
    ray.get(sched.submit.remote(_wire(warm), "warmup", "bench"))
    _wait_done(sched, "warmup", WARMUP, timeout_s)
    ray.get(sched.stats.remote(reset=True))

    ids = _ids("it", n)
    payload = _wire(ids)
    t0 = time.time()
    ray.get(sched.submit.remote(payload, "dispatch", "bench"))
    submitted = time.time()
    _wait_done(sched, "dispatch", n, timeout_s)
    stats = ray.get(sched.stats.remote())
    ray.kill(sched, no_restart=True)
    ray.kill(sim, no_restart=True)
    with closing(sqlite3.connect(tmp / "ledger.db")) as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM iterations WHERE suite = "
                                 "'dispatch' GROUP BY state").fetchall())
        (last,) = db.execute("SELECT MAX(ended_at) FROM iterations WHERE suite = "
                             "'dispatch'").fetchone()
        (attempts,) = db.execute("SELECT COUNT(*) FROM attempts WHERE iteration_key LIKE "
                                 "'bench/it-%'").fetchone()  # keyed tenant/id
    return {"elapsed_s": last - t0, "submit_s": submitted - t0, "states": states,
            "attempts": attempts, "stats": stats}


def _ray_native(ids: list[str], num_cpus: float) -> float:
    """Seconds from submitting one task per iteration to the last result."""
    import ray

    delays = _delays()

    @ray.remote(num_cpus=num_cpus)
    def iteration(iid: str) -> str:
        boot_s, exec_s = delays.draw(iid)
        time.sleep(boot_s)  # "boot"
        time.sleep(exec_s)  # "exec"
        return "SUCCEEDED"

    slots = int(ray.cluster_resources().get("CPU", 1) / num_cpus)
    ray.get([iteration.remote(f"warm-{i}") for i in range(slots * 8)])  # workers up, untimed
    t0 = time.time()
    got = ray.get([iteration.remote(iid) for iid in ids])
    elapsed = time.time() - t0
    assert got == ["SUCCEEDED"] * len(ids)
    return elapsed


def run(args: argparse.Namespace) -> dict[str, Any]:
    n, hosts = (1000, 10) if args.quick else (10_000, 100)
    cpus = os.cpu_count() or 1
    ids = _ids("it", n)
    with local_ray("bench-dispatch-") as tmp:
        ours = _ours(n, hosts, tmp, timeout_s=120 if args.quick else 600)
        native_s = _ray_native(ids, 1)
        over_s = _ray_native(ids, RAY_FRACTION)
    delays = _delays()
    mean_s = sum(sum(delays.draw(iid)) for iid in ids) / n
    return _report(n, hosts, cpus, ours, native_s, over_s, mean_s)


def _report(n: int, hosts: int, cpus: int, ours: dict[str, Any], native_s: float,
            over_s: float, mean_s: float) -> dict[str, Any]:
    stats = ours["stats"]
    ips, native, over = n / ours["elapsed_s"], n / native_s, n / over_s
    result = {
        "iterations": n,
        "hosts": hosts,
        "host": f"{HOST_CPUS} vcpus, {HOST_MEM_MIB} MiB each",
        "iteration": f"{ITERATION['cpus']} vcpu, {ITERATION['mem_mib']} MiB",
        "delays": _delays().describe(),
        "mean_delay_ms": round(mean_s * 1000, 3),
        "ray_cpus": cpus,
        "iterations_per_s": round(ips, 1),
        "elapsed_s": round(ours["elapsed_s"], 3),
        "submit_s": round(ours["submit_s"], 3),
        "states": ours["states"],
        "attempts": ours["attempts"],
        "placement_decisions": stats["placements"],
        "placement_p50_ms": stats["placement_p50_ms"],
        "placement_p99_ms": stats["placement_p99_ms"],
        "scheduler": {k: v for k, v in stats.items() if not k.startswith("placement")},
        "ray_native_iterations_per_s": round(native, 1),
        # with num_cpus=1, Ray runs `cpus` tasks at once: it cannot beat cpus / mean delay
        "ray_native_ceiling_per_s": round(cpus / mean_s, 1),
        "ray_native_oversubscribed_num_cpus": RAY_FRACTION,
        "ray_native_oversubscribed_iterations_per_s": round(over, 1),
        "speedup": round(ips / native, 2),
        "speedup_vs_oversubscribed": round(ips / over, 2),
        "target_iterations_per_s": TARGET_ITERATIONS_PER_S,
        "target_speedup": TARGET_SPEEDUP,
    }
    ok = "met" if ips >= TARGET_ITERATIONS_PER_S and ips / native >= TARGET_SPEEDUP else "MISSED"
    sched = result["scheduler"]
    calls = sched["host_calls"]
    print_table(f"dispatch: {n} iterations on {hosts} simulated hosts "
                f"({HOST_CPUS} vcpus each), Ray on {cpus} cpus", [
        ("simulated delays", f"{result['delays']}; mean boot+exec {mean_s * 1000:.2f} ms"),
        ("tryfleet scheduler", f"{ips:.0f} iterations/s ({ours['elapsed_s']:.2f} s from "
                               f"submit to last result; submit {ours['submit_s']:.2f} s)"),
        ("  outcomes", ", ".join(f"{k} {v}" for k, v in sorted(ours["states"].items()))
         + f"; {ours['attempts']} attempts"),
        ("  placement p50 / p99", f"{stats['placement_p50_ms']:.3f} / "
                                  f"{stats['placement_p99_ms']:.3f} ms per decision "
                                  f"({stats['placements']} decisions)"),
        ("  passes, ledger commits", f"{sched['passes']} passes ({sched['pass_mean_ms']} ms "
                                     f"mean), {sched['ledger_commits']} commits"),
        ("  Ray calls to hosts", f"{calls.get('start_many', 0)} start_many, "
                                 f"{calls.get('collect', 0)} collect "
                                 f"({sched['outcomes_per_collect']} outcomes each)"),
        ("Ray task per iteration, num_cpus=1", f"{native:.0f} iterations/s (ceiling "
                                               f"{cpus / mean_s:.0f}/s: {cpus} at a time)"),
        (f"Ray task per iteration, num_cpus={RAY_FRACTION}", f"{over:.0f} iterations/s"),
        ("speedup", f"{ips / native:.1f}x vs num_cpus=1 "
                    f"({ips / over:.1f}x vs num_cpus={RAY_FRACTION})"),
        ("targets", f">= {TARGET_ITERATIONS_PER_S:.0f} iterations/s and >= "
                    f"{TARGET_SPEEDUP:.0f}x: {ok}"),
    ])
    return result
