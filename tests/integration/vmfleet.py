"""A real fleet for the tests of the API over real HTTP: Ray started in this process, the real
node agent (real VMs of the built base image), the scheduler and the gateway actor on a free
loopback port, keys made with KeyStore, in a data dir of the tests' own."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tryfleet.gateway.keys import KeyStore
from tryfleet.images.digest import compute_digest
from tryfleet.images.store import ImageStore


def pinned_data_dir(shared: Path) -> Path:
    """A data dir of this module's own, next to the shared one (QEMU's user must reach the
    disks through it): its ledger, keys, policy and logs; the shared saved guests, accelerator
    probe and run/ (the reaper must see every owner on this host); and an images/ holding only
    the base build of this code's digest, so that a build of other code meanwhile (which
    moves the shared `current`) does not change the guest agent under these tests."""
    own = Path(tempfile.mkdtemp(prefix=f"{shared.name}-apitest-", dir=shared.parent))
    own.chmod(0o755)
    for name in ("snapshots", "run"):
        (own / name).symlink_to(shared / name)
    (own / "host").mkdir()
    if (shared / "host" / "accel.json").exists():
        shutil.copy(shared / "host" / "accel.json", own / "host" / "accel.json")
    store = ImageStore(shared)
    recipe = store.recipe("base")
    for build in (shared / "images" / "base").iterdir():
        manifest = build / "manifest.json"
        if manifest.exists() and compute_digest(recipe.path, json.loads(
                manifest.read_text())["kernel_package"]) == build.name:
            (own / "images" / "base").mkdir(parents=True)
            (own / "images" / "base" / build.name).symlink_to(build)
            (own / "images" / "base" / "current").write_text(build.name + "\n")
            return own
    shutil.rmtree(own)
    pytest.fail("no base image of this code's guest agent: run `tryfleet image build base`")


@dataclass
class VmFleet:
    url: str
    data: Path  # its own data dir
    keys: KeyStore
    node: Any  # the node agent's actor handle
    actors: tuple[Any, ...]  # not detached: alive while a handle is held


@contextlib.contextmanager
def vm_fleet(data_dir: Path, host: str, policy: str | None = None) -> Iterator[VmFleet]:
    """The fleet, its policy.toml `policy` when given; everything of it gone afterwards."""
    from tryfleet import cluster

    cluster.secure_ray()
    import ray

    from tryfleet.gateway.actor import start_gateway
    from tryfleet.nodeagent.actor import start_node_actor
    from tryfleet.wire import NAMESPACE

    own = pinned_data_dir(data_dir)
    if policy is not None:
        (own / "policy.toml").write_text(policy)
    ray.init(address="local", num_cpus=os.cpu_count() or 1, namespace=NAMESPACE,
             include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    keys = KeyStore(cluster.ledger_path(own), own)
    try:
        node = start_node_actor(str(own), host, detached=False, pool_max_per_key=1)
        sched = cluster.ensure_scheduler(own, detached=False)
        deadline = time.monotonic() + 120
        while not any(h["cpus"] for h in ray.get(sched.status.remote())["hosts"]):
            assert time.monotonic() < deadline, "the scheduler did not see the host"
            time.sleep(0.2)
        gateway, url = start_gateway(own, cluster.ledger_path(own), "127.0.0.1:0",
                                     detached=False)
        yield VmFleet(url, own, keys, node, (sched, gateway))
        ray.get(node.shutdown.remote(), timeout=120)
    finally:
        keys.close()
        ray.shutdown()
        shutil.rmtree(own, ignore_errors=True)  # the shared folders are symlinks


__all__ = ["VmFleet", "pinned_data_dir", "vm_fleet"]
