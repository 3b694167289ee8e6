"""The fleet the `api` scenario measures: one of its own (a Ray for the run, this host's real
node agent with a warm pool of `base` guests, the scheduler, and one gateway actor per gateway
variant, each on a free loopback port), or the fleet `tryfleet up` started with a given data
dir (`--attach DATA_DIR`: its own gateway and admin key, nothing started or stopped).

Its own fleet has a data dir of its own (ledger, keys, policy, audit trail, logs) next to the
shared one, sharing the built images, saved guests and `run/`, where every node agent of this
host registers: its node agent reaps only VMs whose owner is gone. Before it starts, the run
refuses to go on if a VM of an agent of another data dir is there (it would be reaped). At the
end the node agent shuts down (its VMs destroyed) and the run checks that none of the VMs its
agent owned is left.

A gateway variant is a configuration of the gateway: its name and the keyword arguments its
actor takes. Every variant gets an actor of its own, started side by side, and the scenario
measures each in turn against the same sandbox and the same in-cluster path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tryfleet  # noqa: F401  (sets Ray's auth mode, as tryfleet does, before Ray is imported)

HOST = "apibench"  # the node agent's host name: apart from the shared fleet's
GUEST = {"image": "base", "cpus": 1, "mem_mib": 512}  # the pool's size, so a create hits it
HOST_WAIT_S = 120.0


@dataclass(frozen=True, slots=True)
class GatewayVariant:
    """One gateway configuration: `options` are keyword arguments of the Gateway actor."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()


DEFAULT = GatewayVariant("default")  # as `tryfleet up` runs it


@dataclass
class BenchFleet:
    """What the scenario talks to: a URL per variant, the keys' headers, the node actors
    (host -> handle, for the in-cluster path and the pool's state) and, once the fleet is
    gone, what its cleanup found."""

    urls: dict[str, str]
    sandbox_key: dict[str, str]
    admin_key: dict[str, str]
    nodes: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)
    gateway_pids: dict[str, int] = field(default_factory=dict)  # variant -> its process

    def vms(self) -> set[str]:
        """The VMs the node agents hold now (pooled ones, ready or filling, and sandboxes')."""
        import ray

        from tryfleet.wire import HostStatus, unpack_map

        return {vm for node in self.nodes.values() for st in unpack_map(
            HostStatus, ray.get(node.status_all.remote(), timeout=30)).values() for vm in st.vms}

    def pool_ready(self) -> dict[str, int]:
        """Ready pooled VMs of GUEST's kind, per host, from the node agents themselves."""
        import ray

        from tryfleet.wire import HostStatus, unpack_map

        out = {}
        for host, node in self.nodes.items():
            status = unpack_map(HostStatus, ray.get(node.status_all.remote(), timeout=30))
            out[host] = sum(r.ready for st in status.values() for r in st.pool
                            if (r.image, r.cpus, r.mem_mib, r.disk_mib)
                            == (GUEST["image"], GUEST["cpus"], GUEST["mem_mib"], None))
        return out


def fleet(attach: Path | None, variants: Sequence[GatewayVariant], pool_ready: int
          ) -> contextlib.AbstractContextManager[BenchFleet]:
    if attach is None:
        return own_fleet(variants, pool_ready)
    if list(variants) != [DEFAULT]:
        sys.exit("api --attach measures the fleet's own gateway only")
    return attached_fleet(attach)


# ---- a fleet of the run's own ----------------------------------------------------------------
@contextlib.contextmanager
def own_fleet(variants: Sequence[GatewayVariant], pool_ready: int) -> Iterator[BenchFleet]:
    import ray

    from tryfleet import cluster
    from tryfleet.gateway.keys import KeyStore, Scope
    from tryfleet.nodeagent import default_data_dir
    from tryfleet.nodeagent.actor import start_node_actor

    from .onray import local_ray
    from .soak.real import at_risk, domains, owners_of
    from .vmbench import SETUP_HINT

    shared = default_data_dir()
    risky = at_risk(domains(False), shared / "run", set())
    if risky:
        sys.exit("api: this host runs tryfleet VMs of another data dir, which the run's node "
                 f"agent would reap: {', '.join(risky[:5])}; run it later")
    own = own_data_dir(shared)
    bench = BenchFleet({}, {}, {}, {})
    try:
        with local_ray("bench-api-"):
            keys = KeyStore(cluster.ledger_path(own), own)
            try:
                node = start_node_actor(str(own), HOST, detached=False, pool_max_per_key=1,
                                        pool=(f"base={pool_ready}",))
            except Exception as err:  # no libvirtd, no image: say what to do
                sys.exit(f"api needs libvirtd and the base image: {err}\n{SETUP_HINT}")
            bench.nodes = {HOST: node}
            pids = {_node_pid(node)}
            try:
                held = [cluster.ensure_scheduler(own, detached=False)]
                _wait_for_host(held[0])
                for v in variants:
                    handle, bench.urls[v.name], bench.gateway_pids[v.name] = \
                        start_variant(v, own)
                    held.append(handle)  # not detached: alive while a handle is held
                bench.sandbox_key = _bearer(keys, Scope.SANDBOX)
                bench.admin_key = _bearer(keys, Scope.ADMIN)
                yield bench
            finally:
                pids.add(_node_pid(node))
                owners = owners_of(shared / "run", pids)
                ray.get(node.shutdown.remote(), timeout=120)  # its VMs destroyed
                keys.close()
        left = sorted(n for n, o in domains(False).items() if o in owners)
        bench.report.update(node_owners=sorted(owners), leftover_domains=left)
    finally:
        shutil.rmtree(own, ignore_errors=True)  # the shared folders are symlinks


def own_data_dir(shared: Path) -> Path:
    """A data dir of the run's own next to the shared one (QEMU's user must reach the disks
    through it): the shared images, saved guests, run/ and accelerator probe."""
    own = Path(tempfile.mkdtemp(prefix=f"{shared.name}-apibench-", dir=shared.parent))
    own.chmod(0o755)
    for name in ("images", "snapshots", "run"):
        (own / name).symlink_to(shared / name)
    (own / "host").mkdir()
    if (shared / "host" / "accel.json").exists():
        shutil.copy(shared / "host" / "accel.json", own / "host" / "accel.json")
    return own


def start_variant(variant: GatewayVariant, data_dir: Path) -> tuple[Any, str, int]:
    """A gateway actor of this variant, named apart from the others, on a free loopback port:
    (its handle, its URL, its process id)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from tryfleet import cluster, local
    from tryfleet.gateway.actor import GATEWAY_NAME, Gateway
    from tryfleet.wire import NAMESPACE

    here = ray.get_runtime_context().get_node_id()
    actor: Any = ray.remote(Gateway).options(
        name=f"{GATEWAY_NAME}-{variant.name}", namespace=NAMESPACE, num_cpus=0,
        max_restarts=-1, max_concurrency=1000,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(str(data_dir), str(cluster.ledger_path(data_dir)),
             f"127.0.0.1:{local.free_port()}", **dict(variant.options))
    got = ray.get(actor.ping.remote(), timeout=60)
    return actor, str(got["url"]), int(got["pid"])


def _bearer(keys: Any, scope: Any) -> dict[str, str]:
    _, token = keys.create("bench", frozenset({scope}), created_by="benchmarks.api")
    return {"Authorization": f"Bearer {token}"}


def _node_pid(node: Any) -> int:
    import ray

    from tryfleet.wire import HostStatus, unpack_map

    (status,) = unpack_map(HostStatus, ray.get(node.status_all.remote(), timeout=60)).values()
    return status.pid


def _wait_for_host(sched: Any) -> None:
    import ray

    deadline = time.monotonic() + HOST_WAIT_S
    while not any(h["cpus"] for h in ray.get(sched.status.remote())["hosts"]):
        if time.monotonic() > deadline:
            sys.exit(f"api: the scheduler did not see the node agent within {HOST_WAIT_S:g} s")
        time.sleep(0.2)


# ---- the fleet `tryfleet up` started ---------------------------------------------------------
@contextlib.contextmanager
def attached_fleet(data_dir: Path) -> Iterator[BenchFleet]:
    """The running fleet of data_dir, through its gateway and its admin key; this process a
    Ray driver of its cluster for the in-cluster path."""
    import httpx
    import ray

    from tryfleet import cluster, local
    from tryfleet.gateway.actor import GATEWAY_NAME
    from tryfleet.wire import NAMESPACE, NODE_ACTOR_PREFIX

    st, url, key = cluster.state(data_dir), cluster.api_url(data_dir), local.admin_key(data_dir)
    if st is None or url is None or key is None:
        sys.exit(f"api --attach: no fleet with a gateway and an admin key is up in {data_dir}")
    admin = {"Authorization": f"Bearer {key}"}
    got = httpx.get(f"{url}/v1/fleet", headers=admin, timeout=30)
    got.raise_for_status()
    hosts = [h["host"] for h in got.json()["hosts"] if not h["lost"]]
    cluster.init(str(st["address"]))
    try:
        nodes = {h: ray.get_actor(NODE_ACTOR_PREFIX + h, namespace=NAMESPACE) for h in hosts}
        gateway: Any = ray.get_actor(GATEWAY_NAME, namespace=NAMESPACE)
        pinged: dict[str, Any] = ray.get(gateway.ping.remote(), timeout=60)
        pid = int(pinged["pid"])
        yield BenchFleet({DEFAULT.name: url}, admin, admin, nodes,
                         {"attached": str(data_dir)}, {DEFAULT.name: pid})
    finally:
        ray.shutdown()


def machine_load() -> dict[str, Any]:
    """What else runs here: the load averages and the processes busy over one second."""
    import psutil

    procs = list(psutil.process_iter(["name", "cmdline"]))
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(1.0)
    busy: list[dict[str, Any]] = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            pct = p.cpu_percent(None)
            if pct >= 10 and p.pid != os.getpid():
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
                busy.append({"pct": round(pct), "cmd": cmd[:100]})
    return {"loadavg": [round(x, 2) for x in os.getloadavg()],
            "busy": sorted(busy, key=lambda b: -b["pct"])[:8]}
