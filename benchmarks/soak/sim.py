"""The simulated soak: the real scheduler on Ray (restartable, its ledger in the run's temp dir)
over simulated hosts (nodeagent/simhost.py: no VMs, an attempt is a seeded timer), served by
several actors of a few hosts each that Ray restarts when their process is killed; a restarted
actor knows none of the attempts its hosts were running.

Every direct interaction with the simulated hosts is in the five small functions at the top
(start them, a pid, a kill, a removal, what they still hold), so a change to how simulated
hosts are registered or called touches only those.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..onray import local_ray, start_scheduler
from .chaos import Chaos, Event, plan
from .checks import check, timing
from .drive import Progress, call, chunks_of, drive, due, keep_ledger, kill_scheduler

HOST_CPUS = 4  # small hosts, so work queues behind the running attempts
HOST_MEM_MIB = 8192
ITERATION = {"cpus": 1, "mem_mib": 512}
DELAYS = {"boot_median_ms": 20.0, "boot_sigma": 0.5, "exec_median_ms": 100.0, "exec_sigma": 0.5}
LEAK_WAIT_S = 5.0


def host_name(i: int) -> str:
    return f"sim{i:03d}"


# ---- the simulated hosts: every direct call to them ---------------------------------------
def start_sim_actors(hosts: int, per_actor: int, seed: int, removed_file: Path) -> list[Any]:
    """`hosts` simulated hosts, `per_actor` to an actor, each actor restarted by Ray when its
    process dies; hosts removed for good are kept in removed_file across restarts."""
    import ray

    from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, Delays, SimHosts, SimHostSpec
    from tryfleet.wire import NAMESPACE

    delays = asdict(Delays(seed=seed, **DELAYS))
    actors = []
    for g in range(math.ceil(hosts / per_actor)):
        specs = [asdict(SimHostSpec(host_name(i), cpus=HOST_CPUS, mem_mib=HOST_MEM_MIB))
                 for i in range(g * per_actor, min(hosts, (g + 1) * per_actor))]
        actors.append(ray.remote(SimHosts).options(
            name=f"{SIM_GROUP_PREFIX}soak-{g:02d}", namespace=NAMESPACE, num_cpus=0,
            max_concurrency=10_000, max_restarts=-1,
        ).remote(specs, delays, str(removed_file)))
    ray.get([a.ping.remote() for a in actors])
    return actors


def actor_pid(actor: Any) -> int:
    return int(call(actor.pid))


def kill_actor(actor: Any) -> dict[str, Any]:
    """SIGKILL the actor's process; Ray restarts it with no attempts."""
    pid = actor_pid(actor)
    os.kill(pid, signal.SIGKILL)
    return {"pid": pid}


def remove_host(actor: Any, host: str) -> dict[str, Any]:
    return {"host": host, "attempts_taken": int(call(actor.remove, host))}


def held(actors: list[Any]) -> tuple[int, int]:
    """(attempts still running, finished outcomes never acknowledged) on all hosts."""
    stats = [call(a.stats) for a in actors]
    return sum(s["running"] for s in stats), sum(s["unacknowledged"] for s in stats)


# ---- the run ---------------------------------------------------------------------------------
def work(n: int) -> list[dict[str, Any]]:
    return [{"image": "base", "command": ["sim"], "id": f"soak-{i:06d}", **ITERATION}
            for i in range(n)]


def events(size: Any, seed: int, actors: int, chunk_len: int) -> list[Event]:
    """The plan; every other scheduler kill lands when a chunk is being submitted."""
    submits = [due(k, size.lead, chunk_len) for k in range(size.chunks)]
    return plan(seed, size.iterations,
                {"scheduler": size.scheduler_kills, "node": size.node_kills,
                 "remove": size.removals},
                {"node": actors, "remove": size.hosts}, {"scheduler": submits})


def run(size: Any, seed: int) -> dict[str, Any]:
    import ray

    with local_ray("bench-soak-") as tmp:
        ledger = tmp / "ledger.db"
        actors = start_sim_actors(size.hosts, size.per_actor, seed, tmp / "removed-hosts")
        sched = start_scheduler(ledger, size.hosts, restartable=True)
        chunks = chunks_of(work(size.iterations), size.chunks)
        submitting = threading.Event()
        actions = {
            "scheduler": lambda ev: kill_scheduler(sched, submitting),
            "node": lambda ev: {"actor": ev.target, **kill_actor(actors[ev.target])},
            "remove": lambda ev: remove_host(actors[ev.target // size.per_actor],
                                             host_name(ev.target)),
        }
        progress = Progress(ledger)
        chaos = Chaos(events(size, seed, len(actors), len(chunks[0])), actions, progress)
        try:
            tl = drive(sched, ledger, chunks, size.lead, chaos, size.grace_s, size.deadline_s,
                       submitting)
        finally:
            progress.close()
        time.sleep(LEAK_WAIT_S)
        running, unacked = held(actors)
        final = check(ledger, tl.submitted)
        marks = timing(ledger, [r["killed_at"] for r in chaos.records if "killed_at" in r])
        kept = keep_ledger(ledger) if final.not_terminal or final.double_committed \
            or tl.stuck else None
        stats = {**call(sched.stats), "in_flight_at_end": call(sched.status)["in_flight"]}
        ray.kill(sched, no_restart=True)
        for a in actors:
            ray.kill(a, no_restart=True)
        return {"timeline": tl, "chaos": chaos.records, "planned": chaos.events,
                "final": final, "timing": marks, "kept_ledger": kept, "scheduler_stats": stats,
                "leaked_domains": running, "leaked_overlays": unacked,
                "leaks": {"meaning": "simulated hosts: attempts still running (domains) and "
                                     "outcomes never acknowledged (overlays)"},
                "setup": {"hosts": size.hosts, "actors": len(actors),
                          "hosts_per_actor": size.per_actor,
                          "host": f"{HOST_CPUS} vcpus, {HOST_MEM_MIB} MiB",
                          "iteration": f"{ITERATION['cpus']} vcpu, {ITERATION['mem_mib']} MiB",
                          "delays": DELAYS}}
