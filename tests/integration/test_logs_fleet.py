"""Logs of a real fleet on Ray, each actor in its own process: the format chosen where the
fleet starts reaches every actor, each role writes its JSON lines to <data>/logs/<role>.jsonl
(0600), and the ids of one API request follow its work from the gateway through the scheduler
to the node agent that ran it. Ray started in this process; the node agent on the fake
hypervisor (no VM boots: what is logged does not depend on one)."""

import json
import os
import shutil
import stat

import httpx
import pytest

from tests.waiting import until
from tryfleet import logs

HOST = "loghost"
RID = "req_followed_00001"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from tryfleet import cluster

    cluster.secure_ray()
    import ray

    from tryfleet.local import free_port
    from tryfleet.nodeagent.actor import start_node_actor
    from tryfleet.wire import NAMESPACE

    data = tmp_path_factory.mktemp("logfleet")
    before = os.environ.get(logs.ENV_FORMAT)
    os.environ[logs.ENV_FORMAT] = "text"  # as `tryfleet --log-format text up` leaves it
    ray.init(address="local", num_cpus=os.cpu_count() or 1, namespace=NAMESPACE,
             include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        node = start_node_actor(str(data), HOST, fake=True, detached=False)
        sched = cluster.ensure_scheduler(data, detached=False)
        until(lambda: any(h["cpus"] for h in ray.get(sched.status.remote())["hosts"]), 120)
        gateway, url, admin = cluster.open_front_door(data, f"127.0.0.1:{free_port()}",
                                                      detached=False)
        with httpx.Client(base_url=url, timeout=60) as http:
            yield {"http": http, "data": data, "admin": {"Authorization": f"Bearer {admin}"},
                   "actors": (node, sched, gateway),
                   "session": ray._private.worker.global_worker.node.get_session_dir_path()}
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop(logs.ENV_FORMAT, None)
        else:
            os.environ[logs.ENV_FORMAT] = before
        shutil.rmtree(data, ignore_errors=True)


def lines_of(data, name):
    path = logs.log_file(data, name)
    return [json.loads(line) for line in path.read_text().splitlines()] \
        if path.exists() else []


@pytest.fixture(scope="module")
def ran(fleet):
    """One iteration submitted with request id RID, until it ended."""
    http = fleet["http"]
    key = http.post("/v1/keys", json={"tenant": "acme", "scopes": ["batch", "read"]},
                    headers=fleet["admin"]).json()["key"]
    acme = {"Authorization": f"Bearer {key}"}
    r = http.post("/v1/batches", headers={**acme, "X-Request-Id": RID}, json={
        "suite": "nightly", "iterations": [{"id": "it-1", "image": "base",
                                            "command": ["echo", "hi"]}]})
    assert r.status_code == 201, r.text
    until(lambda: http.get("/v1/iterations/it-1", headers=acme).json()["state"]
          == "SUCCEEDED", 120)
    return key.split("_")[1]


def test_each_role_writes_json_lines_to_its_own_private_file(fleet, ran):
    for name in ("gateway", "scheduler", f"nodeagent-{HOST}"):
        path = logs.log_file(fleet["data"], name)
        until(path.exists, 30)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert {line["role"] for line in lines_of(fleet["data"], name)} == {
            name.split("-")[0]}


def test_a_requests_ids_follow_its_work_to_the_scheduler_and_the_node(fleet, ran):
    want = {"request_id": RID, "tenant": "acme", "suite": "nightly"}

    def found(name, text):
        return [g for g in lines_of(fleet["data"], name) if text in g["msg"]
                and g.get("request_id") == RID]

    until(lambda: found(f"nodeagent-{HOST}", "attempt ended"), 30)
    (access,) = found("gateway", "POST /v1/batches")
    (submitted,) = found("scheduler", "submitted")
    (ended,) = found("scheduler", "attempt 1 of it-1 ended")
    (on_node,) = found(f"nodeagent-{HOST}", "attempt ended")
    for line in (access, submitted, ended, on_node):
        assert {k: line.get(k) for k in want} == want and line["key"] == ran, line
    assert (ended["iteration"], ended["attempt"], ended["host"]) == ("it-1", 1, HOST)
    assert (on_node["iteration"], on_node["attempt"], on_node["host"]) == ("it-1", 1, HOST)


def test_the_chosen_format_reaches_the_actors_stderr(fleet, ran):
    """Ray keeps an actor's stderr in its session's worker-*.err files: there, text."""
    folder = os.path.join(fleet["session"], "logs")

    def texts():
        return [line for name in os.listdir(folder) if name.startswith("worker-")
                and name.endswith(".err") for line in open(os.path.join(folder, name))
                if " INFO tryfleet.gateway.access: POST /v1/batches" in line]

    until(texts, 30)
    assert f"request_id={RID}" in texts()[0]
