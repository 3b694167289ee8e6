"""A real fleet for the E2B SDK tests, as test_api_sandboxes.py makes one: Ray started in this
process, the real node agent (real VMs of the built base image), the scheduler and the gateway
actor on a free loopback port, keys made with KeyStore."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from tryfleet.gateway.keys import KeyStore, Scope

from .test_api_sandboxes import _own_data_dir


class E2BFleet:
    def __init__(self, url: str, keys: KeyStore) -> None:
        self.url, self.keys = url, keys

    def key(self, tenant: str = "acme", *scopes: Scope) -> str:
        _, token = self.keys.create(tenant, frozenset(scopes or {Scope.SANDBOX}),
                                    created_by="test")
        return token

    def env(self, key: str) -> dict[str, str]:
        """What a user of E2B's SDKs sets: the gateway for both planes, a tryfleet key."""
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": key}

    def opts(self, key: str) -> dict[str, str]:
        """The same as the Python SDK's arguments."""
        return {"api_url": self.url, "sandbox_url": self.url, "api_key": key}


@contextlib.contextmanager
def e2b_fleet(data_dir: Path, host: str) -> Iterator[E2BFleet]:
    from tryfleet import cluster

    cluster.secure_ray()
    import ray

    from tryfleet.gateway.actor import start_gateway
    from tryfleet.nodeagent.actor import start_node_actor
    from tryfleet.wire import NAMESPACE

    own = _own_data_dir(data_dir)
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
        actors = [sched, gateway]  # not detached: alive while a handle is held
        yield E2BFleet(url, keys)
        del actors
        ray.get(node.shutdown.remote(), timeout=120)
    finally:
        keys.close()
        ray.shutdown()
        shutil.rmtree(own, ignore_errors=True)  # the shared folders are symlinks
