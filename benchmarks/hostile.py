"""hostile: a neighbour VM's `exec true` round trip while three hostile guests run beside it
on the same host (a fork bomb, a memory bomb, an output flood), against the same neighbour on
a quiet host. The phases alternate in one run (quiet, hostile, quiet, ...): the hostile guests
are started before each hostile phase and destroyed after it, so both sides see the same host
load from everything else. Each round also runs the hostile phase once with the node's CPU
weights (nodeagent/cpuweight.py) paused, every VM at the default weight: the baseline the
weights are measured against. Also the egress proxy's added latency for a small HTTP fetch, from
benchmarks/egress.py, when that scenario is there.

Targets (issue 12): neighbour_p99_ratio <= 2.0 on a 2-core host; egress_overhead_p50_ms <= 5."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from tryfleet.nodeagent import GuestError, NodeAgent, SandboxSpec
from tryfleet.nodeagent.sandbox import Sandbox

from .common import percentile, print_table
from .vmbench import node

CHART = [
    ("beside hostile guests: neighbour exec true p50 (ms)", "hostile_p50_ms"),
    ("quiet host: neighbour exec true p50 (ms)", "quiet_p50_ms"),
    ("hostile, CPU weights off: neighbour exec true p50 (ms)", "unweighted_p50_ms"),
    ("beside hostile guests: neighbour exec true p99 (ms)", "hostile_p99_ms"),
    ("quiet host: neighbour exec true p99 (ms)", "quiet_p99_ms"),
    ("hostile, CPU weights off: neighbour exec true p99 (ms)", "unweighted_p99_ms"),
]
NEIGHBOUR = SandboxSpec("base", 1, 256, None)
HOSTILE = SandboxSpec("base", 1, 256, None)
# Each prints "go" once it is under way, then does its harm until its VM is destroyed.
ATTACKS = {
    "fork bomb": "echo go; f(){ f|f& }; f; sleep 3600",
    "memory bomb": "echo go; while true; do python3 -c 'a = []\nwhile True: "
                   "a.append(bytearray(1 << 20))'; done",
    "output flood": "echo go; yes hostile",
}
TARGET_P99_RATIO = 2.0
TARGET_EGRESS_MS = 5.0


def load() -> dict[str, Any]:
    """How busy the host was, besides this benchmark: load averages and the VMs running."""
    from tryfleet.nodeagent.libvirt_hv import LibvirtHypervisor

    hv = LibvirtHypervisor()
    try:
        vms = len(hv.list_domains())
    finally:
        hv.close()
    return {"loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()], "tryfleet_vms": vms}


@contextlib.contextmanager
def hostile_guests(agent: NodeAgent) -> Iterator[list[str]]:
    """Three guests doing their harm; destroyed on the way out. What each ended with."""
    boxes: list[Sandbox] = []
    threads: list[threading.Thread] = []
    ended: list[str] = []
    try:
        for name, script in ATTACKS.items():
            box = agent.acquire(HOSTILE)
            boxes.append(box)
            going = threading.Event()
            t = threading.Thread(target=_harm, args=(box, name, script, going, ended),
                                 daemon=True)
            t.start()
            threads.append(t)
            if not going.wait(120):
                raise RuntimeError(f"the {name} did not start in its guest")
        yield ended
    finally:
        for box in boxes:
            box.destroy()
        for t in threads:
            t.join(timeout=60)


def _harm(box: Sandbox, name: str, script: str, going: threading.Event,
          ended: list[str]) -> None:
    def seen(_stream: int, _data: bytes) -> None:
        going.set()

    try:
        r = box.exec(["sh", "-c", script], timeout_s=3600, max_output=1 << 20,
                     on_output=seen)
        ended.append(f"{name}: exit {r.exit_code} signal {r.signal}")
    except GuestError as err:  # its VM destroyed under it: the expected end
        ended.append(f"{name}: {type(err).__name__}")
    finally:
        going.set()


def sample(box: Sandbox, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = box.exec(["true"], timeout_s=60)
        out.append((time.perf_counter() - t0) * 1000)
        if r.exit_code != 0:
            raise RuntimeError(f"the neighbour's `true` failed: {r}")
    return out


def egress_overhead(n: int) -> tuple[float | None, str]:
    """The egress proxy's p50 added latency (ms) for a small HTTP fetch, n fetches a way, from
    benchmarks/egress.py when that scenario is there."""
    try:
        egress = importlib.import_module("benchmarks.egress")
    except ModuleNotFoundError:
        return None, "benchmarks/egress.py is not there: not measured"
    measure: Callable[[int], dict[str, Any]] = egress.proxy_overhead
    got = measure(n)
    return float(got["egress_overhead_p50_ms"]), (
        f"benchmarks/egress.py proxy_overhead({n}): a guest's whole path (the relay's process "
        f"per connection, the proxy, its audit record) p50 {got['relay_audit_p50_ms']} ms - "
        f"direct p50 {got['direct_p50_ms']} ms; of it the proxy alone adds "
        f"{got['proxy_overhead_p50_ms']} ms and with its audit record "
        f"{got['audit_overhead_p50_ms']} ms")


def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds, per_phase = (2, 30) if args.quick else (4, 100)
    before = load()
    agent = node(warm_pool=False, restore=True)
    quiet: list[float] = []
    hostile: list[float] = []
    unweighted: list[float] = []  # the same, every VM at the default CPU weight
    endings: list[str] = []
    try:
        neighbour = agent.acquire(NEIGHBOUR)
        try:
            sample(neighbour, 5)  # the guest's page cache warm
            for i in range(rounds):
                quiet += sample(neighbour, per_phase)
                for paused in (bool(i % 2), not i % 2):  # which goes first alternates
                    agent.cpu_weights.paused = paused
                    with hostile_guests(agent) as ended:
                        (unweighted if paused else hostile).extend(sample(neighbour,
                                                                          per_phase))
                    endings += ended
                agent.cpu_weights.paused = False
        finally:
            neighbour.destroy()
        accel = agent.accel().accel
    finally:
        agent.close()
    overhead, how = egress_overhead(50 if args.quick else 200)
    return report(quiet, hostile, rounds, accel, {"before": before, "after": load()},
                  overhead, how, sorted(set(endings)), unweighted)


def report(quiet: list[float], hostile: list[float], rounds: int, accel: str,
           host_load: dict[str, Any], overhead: float | None, overhead_note: str,
           endings: list[str], unweighted: list[float] | None = None) -> dict[str, Any]:
    q50, q99 = percentile(quiet, 50), percentile(quiet, 99)
    h50, h99 = percentile(hostile, 50), percentile(hostile, 99)
    result: dict[str, Any] = {
        "accel": accel, "rounds": rounds, "samples_per_side": len(quiet),
        "hostile_guests": list(ATTACKS),
        "quiet_p50_ms": round(q50, 2), "quiet_p99_ms": round(q99, 2),
        "hostile_p50_ms": round(h50, 2), "hostile_p99_ms": round(h99, 2),
        "neighbour_p50_ratio": round(h50 / q50, 2), "neighbour_p99_ratio": round(h99 / q99, 2),
        "target_p99_ratio": TARGET_P99_RATIO,
        "p99_ratio_met": h99 / q99 <= TARGET_P99_RATIO,
        "egress_overhead_p50_ms": overhead, "egress_overhead_note": overhead_note,
        "target_egress_overhead_ms": TARGET_EGRESS_MS,
        "host_load": host_load, "hostile_endings": endings,
    }
    if unweighted:  # the baseline: nodeagent/cpuweight.py paused
        u50, u99 = percentile(unweighted, 50), percentile(unweighted, 99)
        result.update({"unweighted_p50_ms": round(u50, 2), "unweighted_p99_ms": round(u99, 2),
                       "unweighted_p50_ratio": round(u50 / q50, 2),
                       "unweighted_p99_ratio": round(u99 / q99, 2)})
    print_table(f"hostile: neighbour `exec true`, {rounds} rounds of quiet then hostile "
                f"phases, {len(quiet)} samples a side ({accel})", [
        ("quiet p50 / p99", f"{result['quiet_p50_ms']} / {result['quiet_p99_ms']} ms"),
        ("hostile p50 / p99", f"{result['hostile_p50_ms']} / {result['hostile_p99_ms']} ms"),
        ("ratio p50 / p99", f"{result['neighbour_p50_ratio']} / "
                            f"{result['neighbour_p99_ratio']} (target p99 <= "
                            f"{TARGET_P99_RATIO})"),
        ("CPU weights off p50 / p99", f"{result.get('unweighted_p50_ms')} / "
                                      f"{result.get('unweighted_p99_ms')} ms"),
        ("egress overhead p50", f"{overhead} ms ({overhead_note})"),
        ("host load before / after", f"{host_load['before']} / {host_load['after']}"),
    ])
    return result
