"""A tenant frozen with `tryfleet freeze` stays frozen across a restart of the scheduler and the
gateway (as `tryfleet down && tryfleet up` does: both actors gone, then made anew on the same
data directory) until `tryfleet thaw` lifts it. Real Ray in this process, the real scheduler
and gateway actors over real HTTP, simulated hosts (no VM)."""

import dataclasses
import time

import httpx
import pytest
import ray

from tests.waiting import until
from tryfleet import cluster
from tryfleet.cli import main
from tryfleet.gateway.actor import start_gateway
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, Delays, SimHosts, SimHostSpec
from tryfleet.wire import NAMESPACE

QUICK = Delays(seed=1, boot_median_ms=5, boot_sigma=0.1, exec_median_ms=20, exec_sigma=0.1)
BATCH = {"suite": "s", "iterations": [{"image": "sim", "command": ["true"]}]}


class Fleet:
    """Ray with simulated hosts; the scheduler and the gateway started (again) by up()."""

    def __init__(self, data):
        self.data, self.actors, self.url = data, [], ""
        self.hosts = ray.remote(SimHosts).options(
            name=SIM_GROUP_PREFIX + "quick", namespace=NAMESPACE, num_cpus=0,
            max_concurrency=1000).remote([dataclasses.asdict(SimHostSpec(
                "q1", cpus=4, images=("sim",)))], dataclasses.asdict(QUICK))

    def up(self):
        sched = cluster.ensure_scheduler(self.data, detached=False)
        deadline = time.monotonic() + 60
        while not [h for h in ray.get(sched.status.remote())["hosts"] if h["cpus"]]:
            assert time.monotonic() < deadline, "the scheduler did not see the simulated host"
            time.sleep(0.1)
        gateway, self.url = start_gateway(self.data, cluster.ledger_path(self.data),
                                          "127.0.0.1:0", detached=False)
        self.actors = [gateway, sched]

    def down(self):
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    cluster.secure_ray()
    data = tmp_path_factory.mktemp("switches")
    ray.init(address="local", num_cpus=2, namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    f = Fleet(data)
    f.up()
    yield f
    f.down()
    ray.kill(f.hosts, no_restart=True)
    ray.shutdown()


def test_a_freeze_holds_across_down_and_up_until_thawed(fleet):
    keys = KeyStore(cluster.ledger_path(fleet.data), fleet.data)
    _, admin = keys.create("default", frozenset({Scope.ADMIN}), created_by="test")
    _, acme = keys.create("acme", frozenset({Scope.BATCH}), created_by="test")
    keys.close()

    def cli(*args):
        return main([*args, "--url", fleet.url, "--api-key", admin])

    def submit():
        return httpx.post(fleet.url + "/v1/batches", json=BATCH, timeout=60,
                          headers={"Authorization": f"Bearer {acme}"})

    assert cli("freeze", "--tenant", "acme", "--reason", "incident 42") == 0
    assert submit().status_code == 403
    fleet.down()
    fleet.up()
    refused = submit()
    assert (refused.status_code, refused.json()["switch"]["reason"]) == (403, "incident 42")
    assert cli("thaw", "--tenant", "acme") == 0
    accepted = submit()
    assert accepted.status_code == 201, accepted.text
    (iid,) = accepted.json()["ids"]
    until(lambda: httpx.get(f"{fleet.url}/v1/iterations/{iid}", timeout=60, headers={
        "Authorization": f"Bearer {acme}"}).json()["state"] == "SUCCEEDED", 60)
