"""campaign: a small real pytest suite run N times, each time in a clean VM: handed out by the
warm pool (refilled by snapshot restore) vs booted fresh for each iteration. Same concurrency,
same suite, same host; the boot run goes first, then the pooled one."""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tryfleet.nodeagent import IterationSpec, NodeAgent, State

from .common import print_table
from .vmbench import SPEC, ensure_slots, node

CHART = [
    ("fresh boot each (iterations/min)", "boot_iterations_per_min"),
    ("pooled + restore (iterations/min)", "pooled_iterations_per_min"),
]
SUITE = b'''
import json, sqlite3

def test_arithmetic():
    assert sum(range(10)) == 45

def test_json_round_trip():
    assert json.loads(json.dumps({"a": [1, 2]})) == {"a": [1, 2]}

def test_sqlite(tmp_path):
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("create table t (x)")
    db.executemany("insert into t values (?)", [(i,) for i in range(100)])
    assert db.execute("select sum(x) from t").fetchone()[0] == 4950
'''
ITERATION = IterationSpec(image="base", argv=("python3", "-m", "pytest", "-q", "-p",
                                              "no:cacheprovider", "/root/suite"),
                          put=(("/root/suite/test_small.py", SUITE),), timeout_s=300)


def _campaign(agent: NodeAgent, n: int, workers: int) -> tuple[float, list[State]]:
    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as ex:
        states = [o.state for o in ex.map(lambda _: agent.run_iteration(ITERATION), range(n))]
    return n / ((time.monotonic() - t0) / 60), states


def run(args: argparse.Namespace) -> dict[str, Any]:
    n, workers = (3, 1) if args.quick else (24, 2)
    boot_agent = node(warm_pool=False, restore=False)
    try:
        boot_rate, boot_states = _campaign(boot_agent, n, workers)
    finally:
        boot_agent.close()
    # A pool as deep as the concurrency; saved guests for every VM that can be live at once
    # (running, ready, refilling), made untimed (not in the quick run: a one-time cost).
    pooled_agent = node(warm_pool=True, restore=True, ready=workers, pool_max=workers)
    try:
        assert pooled_agent.pool is not None
        if not args.quick:
            ensure_slots(pooled_agent, 2 * workers + 1)
        pooled_agent.pool.wait_ready(pooled_agent._key(SPEC), workers, timeout_s=300)
        pooled_rate, pooled_states = _campaign(pooled_agent, n, workers)
        stats = {"pool_hits": pooled_agent.pool.hits, "pool_misses": pooled_agent.pool.misses}
    finally:
        pooled_agent.close()
    ok = lambda states: sum(1 for s in states if s is State.SUCCEEDED)  # noqa: E731
    result = {
        "iterations": n, "concurrency": workers, "suite": "3 pytest tests (json, sqlite)",
        "boot_iterations_per_min": round(boot_rate, 2),
        "pooled_iterations_per_min": round(pooled_rate, 2),
        "speedup": round(pooled_rate / boot_rate, 2),
        "boot_succeeded": ok(boot_states), "pooled_succeeded": ok(pooled_states), **stats,
    }
    print_table(f"campaign: {n} runs of a small pytest suite, {workers} at a time", [
        ("fresh boot per iteration", f"{result['boot_iterations_per_min']} iterations/min"),
        ("warm pool + restore", f"{result['pooled_iterations_per_min']} iterations/min"),
        ("speedup", f"{result['speedup']}x"),
        ("succeeded (boot / pooled)", f"{result['boot_succeeded']} / "
                                      f"{result['pooled_succeeded']} of {n}"),
        ("pool hits / misses", f"{result['pool_hits']} / {result['pool_misses']}"),
    ])
    return result
