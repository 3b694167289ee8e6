"""acquire: ready-to-exec latency of a pool hit, a snapshot restore and a cold boot.

Restore and cold boot run interleaved, round by round, on the same host and image; pool hits
are timed once the pool is full again. Also the footprint: the node agent's RSS and the host
memory an idle pooled VM holds.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import psutil

from .common import percentile, print_table
from .vmbench import SPEC, ensure_slots, node, vm_host_mib

CHART = [
    ("pool hit p50 (ms)", "pool_hit_p50_ms"),
    ("restore p50 (ms)", "restore_p50_ms"),
    ("cold boot p50 (ms)", "cold_boot_p50_ms"),
]


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds = 3 if args.quick else 10
    restores, boots, hits = [], [], []
    direct = node(warm_pool=False, restore=True)
    try:
        key = direct._key(SPEC)
        image = direct.image("base")
        ensure_slots(direct, 1)  # one saved guest to restore from, made untimed
        for _ in range(rounds):
            t0 = time.perf_counter()
            box = direct._restore_any(key, image, None)
            restores.append(_ms(t0))
            assert box is not None and box.exec(["true"]).exit_code == 0
            box.destroy()
            t0 = time.perf_counter()
            box = direct._boot(key, image, None, None)
            boots.append(_ms(t0))
            assert box.exec(["true"]).exit_code == 0
            box.destroy()
    finally:
        direct.close()
    pooled = node(warm_pool=True, restore=True, ready=2)
    try:
        key = pooled._key(SPEC)
        for _ in range(rounds):
            if not pooled.pool or not pooled.pool.wait_ready(key, 2, timeout_s=300):
                raise RuntimeError("the warm pool did not fill within 300 s")
            t0 = time.perf_counter()
            box = pooled.acquire(SPEC)
            hits.append(_ms(t0))
            assert box.origin == "pool" and box.exec(["true"]).exit_code == 0
            box.destroy()
        pooled.pool.wait_ready(key, 2, timeout_s=300)
        idle = next(b for b in pooled._live.values())
        vm_mib = vm_host_mib(idle.name)
        agent_mib = psutil.Process(os.getpid()).memory_info().rss / 2**20
    finally:
        pooled.close()
    result = {
        "rounds": rounds, "guest": f"{SPEC.cpus} vcpu, {SPEC.mem_mib} MiB, base image",
        "pool_hit_p50_ms": round(percentile(hits, 50), 3),
        "pool_hit_p99_ms": round(percentile(hits, 99), 3),
        "restore_p50_ms": round(percentile(restores, 50), 1),
        "cold_boot_p50_ms": round(percentile(boots, 50), 1),
        "restore_speedup": round(percentile(boots, 50) / percentile(restores, 50), 2),
        "agent_rss_mib": round(agent_mib, 1),
        "pooled_vm_host_mib": round(vm_mib, 1) if vm_mib is not None else None,
    }
    result["accel"] = pooled.accel().accel
    print_table(f"acquire: {rounds} rounds, {result['guest']} ({result['accel']})", [
        ("pool hit p50 / p99", f"{result['pool_hit_p50_ms']} / {result['pool_hit_p99_ms']} ms"),
        ("snapshot restore p50", f"{result['restore_p50_ms']} ms"),
        ("cold boot p50", f"{result['cold_boot_p50_ms']} ms"),
        ("restore speedup (boot / restore)", f"{result['restore_speedup']}x"),
        ("node agent RSS", f"{result['agent_rss_mib']} MiB"),
        ("host memory per idle pooled VM (PSS)", f"{result['pooled_vm_host_mib']} MiB"),
    ])
    return result
