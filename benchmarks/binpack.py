"""binpack: how many hosts a seeded mix fills under our placement vs Ray's default scheduler.

Every iteration of the mix arrives at once and none finishes. Ours: scheduler.placement, used
as scheduler/engine.py uses it (place on the reserved views, reserve on PLACED). Ray's: a real
local Ray cluster (ray.cluster_utils) of equal simulated nodes, one long-lived actor per item
asking for num_cpus and a custom `mem_mib` resource, in the same order.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tryfleet.scheduler.placement import Demand, HostView, Reservations, Verdict, place

from .common import print_table

IMAGE = "base"
DISK_MIB = 2048
# A 16-vcpu, 32 GiB host (2 GiB a vcpu): with 4 GiB a vcpu no item of the mix could exhaust
# memory before cpus and the packing would be one-dimensional.
HOST = HostView(name="host", cpus=16, mem_mib=32768, disk_mib=1_000_000,
                images=frozenset({IMAGE}))
# (cpus, mem_mib) -> weight in 100: mostly 1 vcpu and 512 MiB-1 GiB, a tail of 4 vcpu / 4 GiB.
SHAPES = {
    (1, 256): 10, (1, 512): 20, (1, 1024): 16, (1, 2048): 8, (1, 4096): 4,
    (2, 256): 2, (2, 512): 6, (2, 1024): 10, (2, 2048): 8, (2, 4096): 5,
    (4, 512): 1, (4, 1024): 3, (4, 2048): 4, (4, 4096): 3,
}
SEED = 20240601
TARGET_RATIO = 1.05
RAY_MEM = "mem_mib"  # a custom resource: Ray's own `memory` is not what we place on
# Every actor needs a Ray worker process, and on a small box they all start together and come up
# together, a minute or more after submission: the first gets startup_s (RAY_STARTUP_S plus
# RAY_STARTUP_PER_ITEM_S each), later ones RAY_STALL_S each; the rest are reported unplaced.
RAY_STARTUP_S = 60.0
RAY_STARTUP_PER_ITEM_S = 2.0
RAY_STALL_S = 30.0

CHART = [
    ("tryfleet: hosts used (hosts)", "hosts_used"),
    ("Ray default: hosts used (hosts)", "ray_default_hosts_used"),
    ("lower bound: hosts used (hosts)", "lower_bound"),
    ("tryfleet: cpu fill (% of used hosts)", "cpu_fill_pct"),
    ("Ray default: cpu fill (% of used hosts)", "ray_cpu_fill_pct"),
    ("tryfleet: mem fill (% of used hosts)", "mem_fill_pct"),
    ("Ray default: mem fill (% of used hosts)", "ray_mem_fill_pct"),
]


def mix(n: int, seed: int = SEED) -> list[Demand]:
    """n demands drawn from SHAPES, in arrival order; the same seed gives the same mix."""
    shapes = list(SHAPES)
    drawn = random.Random(seed).choices(shapes, weights=[SHAPES[s] for s in shapes], k=n)
    return [Demand(cpus, mem_mib, DISK_MIB, IMAGE) for cpus, mem_mib in drawn]


def lower_bounds(items: Sequence[Demand], host: HostView) -> dict[str, int]:
    """Per resource, the hosts the items need even if packing wasted nothing."""
    return {
        "cpus": math.ceil(sum(d.cpus for d in items) / host.cpus),
        "mem_mib": math.ceil(sum(d.mem_mib for d in items) / host.mem_mib),
        "disk_mib": math.ceil(sum(d.disk_mib for d in items) / host.disk_mib),
    }


def make_hosts(n: int, host: HostView = HOST) -> list[HostView]:
    return [HostView(name=f"h{i:02d}", cpus=host.cpus, mem_mib=host.mem_mib,
                     disk_mib=host.disk_mib, images=host.images) for i in range(n)]


def pack_with_tryfleet(items: Sequence[Demand], hosts: Sequence[HostView]) -> list[str | None]:
    """Each item's host, placed in order as the scheduler does; None where it would wait."""
    res = Reservations()
    base = {h.name: h for h in hosts}
    views = {name: res.apply(h) for name, h in base.items()}
    out: list[str | None] = []
    for i, demand in enumerate(items):
        decision = place(demand, list(views.values()))
        if decision.verdict is Verdict.PLACED and decision.host is not None:
            res.reserve(f"item-{i}", decision.host, demand)
            views[decision.host] = res.apply(base[decision.host])
            out.append(decision.host)
        else:
            out.append(None)
    return out


def fill(where: Sequence[str | None], items: Sequence[Demand], host: HostView) -> dict[str, Any]:
    """Hosts used, items left unplaced, and the mean cpu and memory use of the used hosts."""
    on: dict[str, list[Demand]] = {}
    for name, demand in zip(where, items, strict=True):
        if name is not None:
            on.setdefault(name, []).append(demand)
    out: dict[str, Any] = {"hosts_used": len(on), "unplaced": sum(w is None for w in where),
                           "cpu_fill_pct": None, "mem_fill_pct": None}
    if on:
        cpu = sum(sum(d.cpus for d in ds) / host.cpus for ds in on.values()) / len(on)
        mem = sum(sum(d.mem_mib for d in ds) / host.mem_mib for ds in on.values()) / len(on)
        out.update(cpu_fill_pct=round(100 * cpu, 1), mem_fill_pct=round(100 * mem, 1))
    return out


class _Holder:
    """Stands for one running iteration: holds its resources until the cluster goes away."""

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def pack_with_ray(items: Sequence[Demand], n_hosts: int, host: HostView = HOST,
                  stall_s: float = RAY_STALL_S) -> list[str | None]:
    """Each item's Ray node id under Ray's default scheduling; None where none came up."""
    import ray
    from ray.cluster_utils import Cluster

    node = {"num_cpus": host.cpus, "resources": {RAY_MEM: host.mem_mib},
            "object_store_memory": 80 * 1024 * 1024}
    # Workers start on demand only: prestarting one per cpu on every node swamps a small box.
    with _unadvertised() as restore:
        cluster = Cluster(initialize_head=True, head_node_args={
            **node, "include_dashboard": False,
            "_system_config": {"prestart_worker_first_driver": False}})
        restore()
        try:
            return _place_actors(cluster, items, n_hosts, node, stall_s)
        finally:
            ray.shutdown()
            cluster.shutdown()


@contextlib.contextmanager
def _unadvertised() -> Iterator[Callable[[], None]]:
    """Keep Ray's "latest cluster" file as it was: cluster_utils writes its own address there
    (and deletes the file on shutdown), and any ray.init() without an address on this machine,
    such as an embedded fleet, would join the benchmark's cluster while it runs."""
    try:
        from ray._common.utils import get_ray_address_file

        path = Path(get_ray_address_file(None))
    except ImportError:  # moved in another Ray version: the default place
        path = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    before = path.read_text() if path.exists() else None

    def restore() -> None:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)

    try:
        yield restore
    finally:
        restore()


def _place_actors(cluster: Any, items: Sequence[Demand], n_hosts: int, node: dict[str, Any],
                  stall_s: float) -> list[str | None]:
    """Start the other nodes, one actor per item in order; each item's node id, or None."""
    import ray

    for _ in range(n_hosts - 1):
        cluster.add_node(wait=False, **node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    holder = ray.remote(_Holder)
    actors = [holder.options(num_cpus=d.cpus, resources={RAY_MEM: d.mem_mib}).remote()
              for d in items]
    refs = [a.node_id.remote() for a in actors]
    index = {ref: i for i, ref in enumerate(refs)}
    out: list[str | None] = [None] * len(items)
    pending, timeout_s = refs, RAY_STARTUP_S + RAY_STARTUP_PER_ITEM_S * len(items)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
        if not ready:
            break
        out[index[ready[0]]] = ray.get(ready[0])
        timeout_s = stall_s
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    items = mix(24 if args.quick else 90)
    bounds = lower_bounds(items, HOST)
    bound = max(bounds.values())
    n_hosts = math.ceil(bound * 1.5) + 1  # room for both, so neither is cut short by the fleet
    ours = fill(pack_with_tryfleet(items, make_hosts(n_hosts)), items, HOST)
    t0 = time.monotonic()
    theirs = fill(pack_with_ray(items, n_hosts), items, HOST)
    ray_s = time.monotonic() - t0
    ray_used = theirs["hosts_used"] or None  # None: no actor came up, nothing was measured
    result = {
        "items": len(items),
        "seed": SEED,
        "items_by_cpus": {str(c): sum(d.cpus == c for d in items) for c in (1, 2, 4)},
        "host": {"cpus": HOST.cpus, "mem_mib": HOST.mem_mib, "disk_mib": HOST.disk_mib},
        "hosts_available": n_hosts,
        "demand": {"cpus": sum(d.cpus for d in items), "mem_mib": sum(d.mem_mib for d in items)},
        "lower_bounds": bounds,
        "lower_bound": bound,
        **ours,
        "ratio": round(ours["hosts_used"] / bound, 3),
        "target_ratio": TARGET_RATIO,
        "ray_default_hosts_used": ray_used,
        "ray_unplaced": theirs["unplaced"],
        "ray_cpu_fill_pct": theirs["cpu_fill_pct"],
        "ray_mem_fill_pct": theirs["mem_fill_pct"],
        "ray_ratio": round(ray_used / bound, 3) if ray_used else None,
        "ray_seconds": round(ray_s, 1),
    }
    _print(result)
    return result


def _print(r: dict[str, Any]) -> None:
    host, lb = r["host"], r["lower_bounds"]
    if r["ray_default_hosts_used"] is None:
        ray = f"not measured: no actor came up in {r['ray_seconds']} s"
    else:
        ray = f"{r['ray_default_hosts_used']} (ratio {r['ray_ratio']:.2f})"
        if r["ray_unplaced"]:
            ray += f", at least: {r['ray_unplaced']} actors never came up"
    print_table(f"binpack: {r['items']} iterations at once (seed {r['seed']}) on "
                f"{r['hosts_available']} hosts of {host['cpus']} vcpus, "
                f"{host['mem_mib'] // 1024} GiB", [
        ("items by vcpus", ", ".join(f"{n} x {c}" for c, n in r["items_by_cpus"].items())),
        ("demand", f"{r['demand']['cpus']} vcpus, {r['demand']['mem_mib'] / 1024:.1f} GiB"),
        ("lower bound", f"{r['lower_bound']} hosts (cpus {lb['cpus']}, mem {lb['mem_mib']}, "
                        f"disk {lb['disk_mib']})"),
        ("tryfleet hosts used", f"{r['hosts_used']} (ratio {r['ratio']:.2f}, "
                                f"target <= {r['target_ratio']})"),
        ("Ray default hosts used", ray),
        ("fill of used hosts, cpu / mem",
         f"tryfleet {_pct(r['cpu_fill_pct'])} / {_pct(r['mem_fill_pct'])}, "
         f"Ray {_pct(r['ray_cpu_fill_pct'])} / {_pct(r['ray_mem_fill_pct'])}"),
        ("unplaced", f"tryfleet {r['unplaced']}, Ray {r['ray_unplaced']} "
                     f"(Ray run {r['ray_seconds']} s)"),
    ])


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value}%"
