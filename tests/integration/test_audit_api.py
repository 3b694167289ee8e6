"""The audit trail as the front door's steps leave it, over real HTTP on loopback: Ray started in
this process, the real scheduler and gateway actors (each appending to the one trail from its
own process), a node agent on the fake hypervisor (no VM boots: what is recorded does not
depend on one). A sandbox opened over HTTP with a tenant key, python3 printing 42, a streamed
command, a file written and read back; then the exec request's trace, read through the API and
the CLI, and the chain verified. Fail-closed over real HTTP: a gateway served in this process
(servedapi.py) whose trail is closed under it."""

import hashlib
import os
import shutil

import httpx
import pytest

from tests.unit.servedapi import served_api
from tests.waiting import until
from tryfleet.cli import main as cli
from tryfleet.wire import ExecReply, ExecRequest, pack, unpack

HOST = "audithost"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from tryfleet import cluster

    cluster.secure_ray()
    import ray

    from tryfleet.local import free_port
    from tryfleet.nodeagent.actor import start_node_actor
    from tryfleet.wire import NAMESPACE

    data = tmp_path_factory.mktemp("auditfleet")
    ray.init(address="local", num_cpus=os.cpu_count() or 1, namespace=NAMESPACE,
             include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        node = start_node_actor(str(data / "node"), HOST, fake=True, detached=False)
        sched = cluster.ensure_scheduler(data, detached=False)
        until(lambda: any(h["cpus"] for h in ray.get(sched.status.remote())["hosts"]), 120)
        gateway, url, admin = cluster.open_front_door(data, f"127.0.0.1:{free_port()}",
                                                      detached=False)
        http = httpx.Client(base_url=url, timeout=60)
        yield {"http": http, "data": data, "admin": {"Authorization": f"Bearer {admin}"},
               "actors": (node, sched, gateway)}
        http.close()
    finally:
        ray.shutdown()
        shutil.rmtree(data, ignore_errors=True)


def key(fleet, tenant):
    r = fleet["http"].post("/v1/keys", json={"tenant": tenant, "scopes": ["sandbox", "read"]},
                           headers=fleet["admin"])
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


@pytest.fixture(scope="module")
def steps(fleet):
    """The front door's steps for tenant acme; the exec request's id and answer."""
    http, acme = fleet["http"], key(fleet, "acme")
    r = http.post("/v1/sandboxes", json={"timeout_s": 300}, headers=acme)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    ran = http.post(f"/v1/sandboxes/{sid}/exec", headers=acme,
                    json={"argv": ["python3", "-c", "print(6*7)"]})
    assert ran.json()["stdout"] == "42\n", ran.text
    streamed = http.post(f"/v1/sandboxes/{sid}/exec/stream", headers=acme,
                         json={"argv": ["sh", "-c", "echo 1; echo 2"]})
    assert streamed.status_code == 200
    url = f"/v1/sandboxes/{sid}/files?path=/root/hello.txt"
    assert http.put(url, content=b"hi", headers=acme).status_code == 200
    assert http.get(url, headers=acme).content == b"hi"
    return {"acme": acme, "sid": sid, "rid": ran.headers["x-request-id"]}


def trace(fleet, headers, rid):
    return fleet["http"].get(f"/v1/audit/trace/{rid}", headers=headers)


def test_the_exec_requests_trace_is_request_command_end_response(fleet, steps):
    got = trace(fleet, steps["acme"], steps["rid"]).json()["items"]
    assert [r["action"] for r in got] == ["api.request", "exec.start", "exec.end",
                                          "api.response"]


def test_the_trace_names_the_key_the_sandbox_and_the_command(fleet, steps):
    got = trace(fleet, steps["acme"], steps["rid"]).json()["items"]
    start = got[1]
    assert (start["tenant"], start["actor"].startswith("key:"), start["sandbox"],
            start["host"], start["details"]["argv"]) == (
        "acme", True, steps["sid"], HOST, ["python3", "-c", "print(6*7)"])


def test_the_end_has_the_exit_code_and_the_digests_of_the_output(fleet, steps):
    end = trace(fleet, steps["acme"], steps["rid"]).json()["items"][2]["details"]
    assert (end["exit_code"], end["stdout_bytes"], end["stdout_sha256"], end["stderr_sha256"]
            ) == (0, 3, hashlib.sha256(b"42\n").hexdigest(), hashlib.sha256(b"").hexdigest())


def test_another_tenant_cannot_read_the_first_tenants_records(fleet, steps):
    bolt = key(fleet, "bolt")
    assert trace(fleet, bolt, steps["rid"]).status_code == 404
    seen = fleet["http"].get("/v1/audit", params={"limit": 1000}, headers=bolt).json()
    assert {r["tenant"] for r in seen["items"]} <= {"bolt"}


def test_the_cli_traces_the_exec_request(fleet, steps, capsys):
    assert cli(["--data-dir", str(fleet["data"]), "audit", "trace", steps["rid"]]) == 0
    out = capsys.readouterr().out
    assert "exec.start" in out and "exec.end" in out and steps["sid"] in out


def test_the_chain_that_gateway_and_scheduler_wrote_together_is_intact(fleet, steps,
                                                                        capsys):
    assert cli(["--data-dir", str(fleet["data"]), "audit", "verify"]) == 0


def test_the_create_trace_holds_the_schedulers_sandbox_open(fleet):
    http, acme = fleet["http"], key(fleet, "acme")
    r = http.post("/v1/sandboxes", json={"timeout_s": 60}, headers=acme)
    got = [(x["action"], x["sandbox"])
           for x in trace(fleet, acme, r.headers["x-request-id"]).json()["items"]]
    assert got == [("api.request", ""), ("sandbox.open", r.json()["id"]),
                   ("api.response", "")]


# ---- fail closed -----------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    with served_api(tmp_path, audit=True) as s:
        yield s


@pytest.fixture
def closed(served):
    """A sandbox of acme's, and the trail closed under the gateway: (acme's key, its id)."""
    acme = {"Authorization": f"Bearer {served.key('acme')}"}
    sid = httpx.post(f"{served.url}/v1/sandboxes", json={"timeout_s": 60},
                     headers=acme).json()["id"]
    served.audit.close()
    return acme, sid


def test_an_unwritable_trail_answers_the_exec_503_audit_unavailable(served, closed):
    acme, sid = closed
    r = httpx.post(f"{served.url}/v1/sandboxes/{sid}/exec", json={"argv": ["true"]},
                   headers=acme)
    assert (r.status_code, r.json()["type"]) == (503, "urn:tryfleet:problem:audit-unavailable")


def test_an_unwritable_trail_runs_nothing(served, closed):
    acme, sid = closed
    httpx.post(f"{served.url}/v1/sandboxes/{sid}/exec", json={"argv": ["touch", "ran"]},
               headers=acme)
    # asked of its node directly (the fake guest's home, where a relative path lands)
    probe = served.node.sandbox_exec("h1", sid, pack(ExecRequest(("test", "-e", "ran"))))
    assert unpack(ExecReply, probe).exit_code == 1


def test_an_unwritable_trail_answers_a_streamed_exec_503_before_it_starts(served, closed):
    acme, sid = closed
    r = httpx.post(f"{served.url}/v1/sandboxes/{sid}/exec/stream", json={"argv": ["true"]},
                   headers=acme)
    assert (r.status_code, r.json()["type"]) == (503, "urn:tryfleet:problem:audit-unavailable")
