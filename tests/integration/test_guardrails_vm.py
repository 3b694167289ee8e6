"""Secrets and data at rest against a real fleet: Ray in this process, the real node agent
(real VMs of the base image), the scheduler and the gateway actor on a free port, a data
directory of this module's own (test_api_sandboxes.py's). A secret a command prints comes
back masked from the API, and after the run nothing in the data directory that holds
outputs, keys, secrets or records is readable by anyone but its owner."""

import os
import shutil
import sqlite3
import stat
import time

import httpx
import pytest

import tryfleet
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.scheduler.records import Iteration

from .test_api_sandboxes import GUEST, _own_data_dir

pytestmark = pytest.mark.vm
HOST = "guardtest"
VALUE = "s3cret-from-the-vault"
POLICY = '[default]\nsecrets = ["CI_*"]\n'


@pytest.fixture(scope="module")
def fleet(data_dir):
    from tryfleet import cluster

    cluster.secure_ray()
    import ray

    from tryfleet.gateway.actor import start_gateway
    from tryfleet.nodeagent.actor import start_node_actor
    from tryfleet.wire import NAMESPACE

    own = _own_data_dir(data_dir)
    (own / "policy.toml").write_text(POLICY)
    ray.init(address="local", num_cpus=os.cpu_count() or 1, namespace=NAMESPACE,
             include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    keys = KeyStore(cluster.ledger_path(own), own)
    try:
        node = start_node_actor(str(own), HOST, detached=False, pool_max_per_key=1)
        sched = cluster.ensure_scheduler(own, detached=False)
        deadline = time.monotonic() + 120
        while not any(h["cpus"] for h in ray.get(sched.status.remote())["hosts"]):
            assert time.monotonic() < deadline, "the scheduler did not see the host"
            time.sleep(0.2)
        gateway, url = start_gateway(own, cluster.ledger_path(own), "127.0.0.1:0",
                                     detached=False)
        _, admin = keys.create("default", frozenset({Scope.ADMIN}), created_by="test")
        _, acme = keys.create("acme", frozenset({Scope.SANDBOX, Scope.BATCH}),
                              created_by="test")
        tryfleet.connect(url, admin).secrets.set("acme", "CI_TOKEN", VALUE)
        yield {"url": url, "data": own, "acme": acme, "actors": [sched, gateway]}
        ray.get(node.shutdown.remote(), timeout=120)
    finally:
        keys.close()
        ray.shutdown()
        shutil.rmtree(own, ignore_errors=True)  # the shared folders are symlinks


@pytest.fixture(scope="module")
def ran(fleet):
    """A sandbox and an iteration that print the secret; what came back."""
    out = {}
    with httpx.Client(base_url=fleet["url"], timeout=600,
                      headers={"Authorization": f"Bearer {fleet['acme']}"}) as c:
        box = c.post("/v1/sandboxes", json=GUEST)
        assert box.status_code == 201, box.text
        sid = box.json()["id"]
        out["exec"] = c.post(f"/v1/sandboxes/{sid}/exec", json={
            "argv": ["sh", "-c", 'echo "token=$CI_TOKEN"'], "secrets": ["CI_TOKEN"]}).json()
        c.delete(f"/v1/sandboxes/{sid}")
    sdk = tryfleet.connect(fleet["url"], fleet["acme"])
    out["iteration"] = sdk.run(Iteration(
        image="base", command=("sh", "-c", 'echo "[$CI_TOKEN]"'), secrets=("CI_TOKEN",),
        id="prints-it", cpus=1, mem_mib=256))
    return out


def test_a_secret_a_command_prints_comes_back_masked(ran):
    assert ran["exec"]["stdout"] == "token=" + "*" * len(VALUE) + "\n"


def test_an_iteration_that_prints_its_secret_is_recorded_masked(fleet, ran):
    assert ran["iteration"].stdout == "[" + "*" * len(VALUE) + "]\n"
    db = sqlite3.connect(fleet["data"] / "ledger.db")
    try:
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert VALUE not in dump


def test_after_the_run_nothing_private_is_readable_by_others(fleet, ran):
    data = fleet["data"]
    readable = []
    for root, dirs, files in os.walk(data):  # symlinks (the shared folders) not followed
        rel = os.path.relpath(root, data).split(os.sep)
        if rel[0] in ("images", "tmp"):
            continue  # golden images: readable by QEMU on purpose, no tenant's data
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or name == "audit.pub" or name.endswith(".qcow2"):
                continue
            if stat.S_IMODE(st.st_mode) & 0o044:
                readable.append(os.path.relpath(path, data))
    assert readable == [] and stat.S_IMODE(data.stat().st_mode) == 0o711
