"""Secrets and data at rest against a real fleet: Ray in this process, the real node agent
(real VMs of the base image), the scheduler and the gateway actor on a free port, a data
directory of this module's own (test_api_sandboxes.py's). A secret a command prints comes
back masked from the API, and after the run nothing in the data directory that holds
outputs, keys, secrets or records is readable by anyone but its owner."""

import os
import sqlite3
import stat

import httpx
import pytest

import tryfleet
from tryfleet.gateway.keys import Scope
from tryfleet.scheduler.records import Iteration

from .test_api_sandboxes import GUEST
from .vmfleet import vm_fleet

pytestmark = pytest.mark.vm
HOST = "guardtest"
VALUE = "s3cret-from-the-vault"
POLICY = '[default]\nsecrets = ["CI_*"]\n'


@pytest.fixture(scope="module")
def fleet(data_dir):
    with vm_fleet(data_dir, HOST, POLICY) as v:
        _, admin = v.keys.create("default", frozenset({Scope.ADMIN}), created_by="test")
        _, acme = v.keys.create("acme", frozenset({Scope.SANDBOX, Scope.BATCH}),
                                created_by="test")
        tryfleet.connect(v.url, admin).secrets.set("acme", "CI_TOKEN", VALUE)
        yield {"url": v.url, "data": v.data, "acme": acme, "actors": v.actors}


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
