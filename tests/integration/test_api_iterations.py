"""Iterations, batches, suites, the stream of endings and the fleet through the HTTP API, over
real HTTP on loopback, against a real fleet: Ray in this process, the real scheduler and the
gateway actor on a free port, and simulated hosts (no VMs) but for the last test, which runs a
real VM through a real node agent.

The simulated hosts: group `quick` (image "sim", done in milliseconds), group `slow` (image
"slow", runs until cancelled or timed out), and `Scripted` (image "echo", below), whose attempts
print what their argv says. Tenants: acme and bolt (keys of several scopes), and an admin."""

import asyncio
import dataclasses
import json
import socket
import time

import httpx
import pytest
import ray

from tests.waiting import until
from tryfleet import cluster
from tryfleet.gateway.actor import start_gateway
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, Delays, SimHosts, SimHostSpec
from tryfleet.wire import NAMESPACE, AttemptKey, Output, State, pack, unpack

from .conftest import own_data_dir

QUICK = Delays(seed=1, boot_median_ms=5, boot_sigma=0.1, exec_median_ms=20, exec_sigma=0.1)
SLOW = Delays(seed=1, boot_median_ms=5, boot_sigma=0.1, exec_median_ms=3_600_000,
              exec_sigma=0.01)
RAW = b"\xff\x00 raw\n"


class Scripted(SimHosts):
    """Simulated hosts whose attempts act out their argv: `echo A B` prints "A B\\n", `bytes`
    prints RAW, `sleep S` prints "started\\n" at once and "done\\n" after S seconds, `false`
    fails (exit 1). Every start request is kept (`seen`)."""

    def __init__(self, hosts, delays=None):
        super().__init__(hosts, delays)
        self.seen = []
        self.argv = {}

    def _start(self, h, req):
        if not super()._start(h, req):
            return False
        self.seen.append(req)
        key = AttemptKey(req.id, req.attempt)
        self.argv[key] = argv = req.spec.argv
        run_s = min(float(argv[1]) if argv[0] == "sleep" else 0.01, req.spec.timeout_s)
        att = h.attempts[key]
        att.timer.cancel()
        att.timer = asyncio.get_running_loop().call_later(
            run_s, self._finish, h, att, State.SUCCEEDED, time.time(), run_s)
        return True

    def _printed(self, key, done):
        argv = self.argv.get(key, ("",))
        if argv[0] == "echo":
            return (" ".join(argv[1:]) + "\n").encode()
        if argv[0] == "bytes":
            return RAW
        if argv[0] == "sleep":
            return b"started\n" + (b"done\n" if done else b"")
        return b""

    def _finish(self, h, att, state, started_at, duration_s):
        super()._finish(h, att, state, started_at, duration_s)
        failed = self.argv.get(att.key, ("",))[0] == "false" and state is State.SUCCEEDED
        att.outcome = h.finished[att.key] = dataclasses.replace(
            att.outcome, stdout=self._printed(att.key, True),
            state=State.FAILED if failed else att.outcome.state,
            exit_code=1 if failed else att.outcome.exit_code)

    async def output(self, host, key, out_offset, err_offset):
        k = unpack(AttemptKey, key)
        att = self._host(host).attempts.get(k)
        if att is None:
            return None
        printed = self._printed(k, att.outcome is not None)
        return pack(Output(printed[out_offset:], b"", att.outcome is not None))

    async def requests(self):
        return [{"id": r.id, **dataclasses.asdict(r.ids)} for r in self.seen]


class Api:
    def __init__(self, url, keys, data, sched, scripted):
        self.url, self.keys, self.data, self.sched, self.scripted = url, keys, data, sched, \
            scripted
        self.tokens = {}

    def key(self, tenant, *scopes, **kw):
        _, token = self.keys.create(tenant, frozenset(scopes), created_by="test", **kw)
        return token

    def client(self, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    cluster.secure_ray()
    data = tmp_path_factory.mktemp("api")
    (data / "policy.toml").write_text("[tenant.acme]\nmax_cpus = 8\n")
    ray.init(address="local", num_cpus=2, namespace=NAMESPACE, include_dashboard=False,
             log_to_driver=False, logging_level="WARNING")
    actors = []
    for group, hosts, delays, cls in (
            ("quick", [SimHostSpec("q1", cpus=8, images=("sim",)),
                       SimHostSpec("q2", cpus=8, images=("sim",))], QUICK, SimHosts),
            ("slow", [SimHostSpec("s1", cpus=4, images=("slow",))], SLOW, SimHosts),
            ("echo", [SimHostSpec("e1", cpus=4, images=("echo",))], QUICK, Scripted)):
        actors.append(ray.remote(cls).options(
            name=SIM_GROUP_PREFIX + group, namespace=NAMESPACE, num_cpus=0,
            max_concurrency=1000).remote([dataclasses.asdict(h) for h in hosts],
                                         dataclasses.asdict(delays)))
    sched = cluster.ensure_scheduler(data, detached=False, limits={"gpu": 2})  # as `up` does
    deadline = time.monotonic() + 60
    while len([h for h in ray.get(sched.status.remote())["hosts"] if h["cpus"]]) < 4:
        assert time.monotonic() < deadline, "the scheduler did not see the simulated hosts"
        time.sleep(0.1)
    gateway, url = start_gateway(data, cluster.ledger_path(data), "127.0.0.1:0",
                                 detached=False)
    keys = KeyStore(cluster.ledger_path(data), data)
    yield Api(url, keys, data, sched, actors[2])
    keys.close()
    for actor in (gateway, sched, *actors):
        ray.kill(actor, no_restart=True)
    ray.shutdown()


@pytest.fixture(scope="module")
def acme(api):
    with api.client(api.key("acme", Scope.BATCH, Scope.READ)) as c:
        yield c


@pytest.fixture(scope="module")
def bolt(api):
    with api.client(api.key("bolt", Scope.BATCH)) as c:
        yield c


@pytest.fixture(scope="module")
def admin(api):
    with api.client(api.key("default", Scope.ADMIN)) as c:
        yield c


def it(iid, *argv, image="echo", **kw):
    return {"id": iid, "image": image, "command": list(argv or ("echo", iid)), **kw}


def submit(client, suite, *iterations, status=201, headers=None, **body):
    r = client.post("/v1/batches", json={"suite": suite, "iterations": list(iterations),
                                         **body}, headers=headers)
    assert r.status_code == status, r.text
    return r


def ended(client, iid, **params):
    """The iteration once it has ended."""
    def get():
        got = client.get(f"/v1/iterations/{iid}", params=params).json()
        return got if got["end_cursor"] is not None else None
    return until(get, 30)


def events(client, path, want, headers=None, params=None, timeout_s=30.0):
    """The first `want` server-sent events of a stream: [{"event", "data", "id"}]."""
    with client.stream("GET", path, params=params, headers=headers,
                       timeout=httpx.Timeout(timeout_s)) as r:
        return read_events(r, want)


def read_events(r, want):
    assert r.status_code == 200, r.read()
    assert r.headers["content-type"].startswith("text/event-stream")
    got, ev = [], {}
    for line in r.iter_lines():
        if line == "":
            if ev:
                got.append(ev)
                ev = {}
            if len(got) >= want:
                break
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            ev[name] = json.loads(value) if name == "data" else value
    return got


def is_problem(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["detail"] and body["request_id"]
    return body


# ---- keys and scopes -------------------------------------------------------------------------
def test_no_key_or_a_wrong_one_is_401(api):
    with api.client() as nobody, api.client("tf_0123456789ab_" + "x" * 43) as wrong:
        for c in (nobody, wrong):
            for method, path in (("GET", "/v1/iterations"), ("POST", "/v1/batches"),
                                 ("GET", "/v1/events/iterations"), ("GET", "/v1/fleet")):
                is_problem(c.request(method, path), 401)


def test_a_revoked_or_expired_key_is_refused_at_once(api):
    info, token = api.keys.create("acme", frozenset({Scope.READ}), created_by="test")
    _, brief = api.keys.create("acme", frozenset({Scope.READ}), created_by="test",
                               expires_at=time.time() + 1.0)
    with api.client(token) as c, api.client(brief) as short:
        assert c.get("/v1/iterations").status_code == 200
        api.keys.revoke(info.id, by="test")
        is_problem(c.get("/v1/iterations"), 401)
        until(lambda: short.get("/v1/iterations").status_code == 401, timeout_s=10)


def test_a_missing_scope_is_403_naming_it(api, acme):
    with api.client(api.key("acme", Scope.READ)) as reader, \
            api.client(api.key("acme", Scope.SANDBOX)) as sandboxer:
        body = is_problem(reader.post("/v1/batches", json={"iterations": [it("x")]}), 403)
        assert "batch" in body["detail"] and body["scopes"] == ["batch"]
        is_problem(reader.post("/v1/suites/any/cancel"), 403)
        is_problem(sandboxer.get("/v1/iterations"), 403)
        is_problem(acme.get("/v1/fleet"), 403)
        is_problem(acme.put("/v1/fleet/limits/ci-db", json={"value": 3}), 403)


# ---- submit, list, get -----------------------------------------------------------------------
def test_a_batch_is_listed_in_pages_by_cursor_and_filtered_by_state(acme):
    r = submit(acme, "pages", *(it(f"p{n}", image="sim") for n in range(5)))
    assert r.json()["ids"] == [f"p{n}" for n in range(5)]
    assert r.json()["request_id"] == r.headers["x-request-id"]
    until(lambda: len(acme.get("/v1/iterations", params={"suite": "pages",
                                                         "state": "SUCCEEDED"}).json()["items"]
                      ) == 5)
    seen, cursor = [], None
    while True:
        page = acme.get("/v1/iterations", params={"suite": "pages", "limit": 2,
                                                  **({"cursor": cursor} if cursor else {})})
        body = page.json()
        assert len(body["items"]) <= 2
        seen += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"p{n}" for n in range(5)]
    queued = acme.get("/v1/iterations", params={"suite": "pages", "state": ["QUEUED",
                                                                             "RUNNING"]})
    assert queued.json() == {"items": [], "next_cursor": None}
    assert "stdout" not in body["items"][0]  # listings carry no output
    is_problem(acme.get("/v1/iterations", params={"cursor": "not-a-cursor"}), 400)
    is_problem(acme.get("/v1/iterations", params={"state": "DONE"}), 422)


def test_one_iteration_with_its_output_and_attempts_text_or_base64(api, acme, admin):
    r = acme.post("/v1/iterations", json={**it("one", "bytes"), "suite": "get"})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "one" and r.json()["request_id"] == r.headers["x-request-id"]
    got = ended(acme, "one")
    assert (got["state"], got["exit_code"], got["stdout"]) == ("SUCCEEDED", 0,
                                                               RAW.decode(errors="replace"))
    assert got["encoding"] == "text" and got["host"] is None  # hosts: for admins only
    (attempt,) = got["attempts"]
    assert (attempt["attempt"], attempt["outcome"], attempt["host"]) == (1, "SUCCEEDED", None)
    raw = acme.get("/v1/iterations/one", params={"encoding": "base64"}).json()
    assert raw["stdout"] == "/wAgcmF3Cg==" and raw["encoding"] == "base64"
    seen = admin.get("/v1/iterations/one", params={"tenant": "acme"}).json()
    assert seen["host"] == "e1" and seen["attempts"][0]["host"] == "e1"
    out = acme.get("/v1/iterations/one/output", params={"out_offset": 2}).json()
    assert (out["stdout"], out["stdout_bytes"], out["done"]) == (" raw\n", 5, True)


def test_the_request_id_and_the_tenants_own_names_reach_the_host(api, acme):
    r = submit(acme, "ids", it("rid"), headers={"X-Request-Id": "req-from-the-client-1"})
    assert r.headers["x-request-id"] == "req-from-the-client-1"
    ended(acme, "rid")
    seen = [x for x in ray.get(api.scripted.requests.remote()) if x["iteration"] == "rid"]
    assert seen == [{**seen[0], "id": "acme/rid", "tenant": "acme", "suite": "ids",
                     "iteration": "rid", "request_id": "req-from-the-client-1"}]
    got = acme.get("/v1/iterations/rid").json()
    assert got["request_id"] == "req-from-the-client-1" and got["key_id"]


def test_following_the_output_streams_it_then_the_ending(acme):
    submit(acme, "follow", it("fol", "sleep", "1.5"))
    until(lambda: acme.get("/v1/iterations/fol").json()["state"] == "RUNNING")
    got = events(acme, "/v1/iterations/fol/output", want=3, params={"follow": "true"})
    assert [e["event"] for e in got] == ["stdout", "stdout", "ended"]
    assert [e["data"]["data"] for e in got[:2]] == ["started\n", "done\n"]
    assert got[1]["data"]["offset"] == len("started\n")
    assert got[2]["data"]["id"] == "fol" and got[2]["data"]["state"] == "SUCCEEDED"


# ---- the stream of endings -------------------------------------------------------------------
def test_every_ending_comes_once_and_last_event_id_resumes_after_it(acme):
    ids = [f"ev{n}" for n in range(6)]
    submit(acme, "events", *(it(i, image="sim") for i in ids))
    got = events(acme, "/v1/events/iterations", want=6, params={"suite": "events"})
    assert sorted(e["data"]["id"] for e in got) == ids  # each once
    assert all(e["event"] == "ended" and e["id"] == e["data"]["end_cursor"] for e in got)
    cursors = [int(e["id"]) for e in got]
    assert cursors == sorted(cursors)
    again = events(acme, "/v1/events/iterations", want=3, params={"suite": "events"},
                   headers={"Last-Event-ID": got[2]["id"]})
    assert [e["data"]["id"] for e in again] == [e["data"]["id"] for e in got[3:]]
    later = submit(acme, "events", it("ev-late", image="sim")).json()["ids"]
    (tail,) = events(acme, "/v1/events/iterations", want=1, params={"suite": "events"},
                     headers={"Last-Event-ID": got[-1]["id"]})
    assert tail["data"]["id"] == later[0]


def test_a_stream_started_now_sees_only_what_ends_after(acme):
    submit(acme, "now", it("before", image="sim"))
    ended(acme, "before")
    with httpx.Client(base_url=acme.base_url, headers=acme.headers) as c, \
            c.stream("GET", "/v1/events/iterations", params={"suite": "now", "cursor": "now"},
                     timeout=30) as r:
        submit(acme, "now", it("after", image="sim"))  # the stream has its cursor: it answered
        assert [e["data"]["id"] for e in read_events(r, 1)] == ["after"]


# ---- cancel ----------------------------------------------------------------------------------
def test_cancel_one_then_the_suite(acme):
    submit(acme, "cx", *(it(f"c{n}", image="slow", cpus=4) for n in range(3)))
    until(lambda: acme.get("/v1/suites/cx").json()["counts"].get("RUNNING") == 1)
    assert acme.post("/v1/iterations/c2/cancel").json() == {"queued_cancelled": 1,
                                                           "running_stopped": 0}
    assert acme.post("/v1/suites/cx/cancel").json() == {"queued_cancelled": 1,
                                                        "running_stopped": 1}
    until(lambda: acme.get("/v1/suites/cx").json()["counts"] == {"CANCELLED": 3})
    assert acme.post("/v1/iterations/c0/cancel").json() == {"queued_cancelled": 0,
                                                           "running_stopped": 0}


# ---- tenants ---------------------------------------------------------------------------------
def test_two_tenants_use_the_same_ids_and_suite_names_apart(acme, bolt):
    submit(acme, "shared", it("t1", "echo", "from acme"), it("t2", "sleep", "600"))
    submit(bolt, "shared", it("t1", "echo", "from bolt"), it("t2", "sleep", "600"))
    assert ended(acme, "t1")["stdout"] == "from acme\n"
    assert ended(bolt, "t1")["stdout"] == "from bolt\n"
    until(lambda: bolt.get("/v1/suites/shared").json()["counts"].get("RUNNING") == 1)
    assert bolt.post("/v1/suites/shared/cancel").json()["running_stopped"] == 1
    until(lambda: bolt.get("/v1/iterations/t2").json()["state"] == "CANCELLED")
    assert acme.get("/v1/iterations/t2").json()["state"] in ("QUEUED", "RUNNING")
    assert acme.get("/v1/suites/shared").json()["counts"].get("CANCELLED") is None
    assert [i["tenant"] for i in bolt.get("/v1/iterations").json()["items"]] == ["bolt"] * 2
    acme.post("/v1/suites/shared/cancel")


def test_another_tenants_iterations_and_suites_are_404_like_nobodys(acme, bolt):
    submit(acme, "mine", it("secret"))
    ended(acme, "secret")
    for who, iid, suite in (("acme's", "secret", "mine"), ("nobody's", "nosuch", "nosuite")):
        answers = [bolt.get(f"/v1/iterations/{iid}"),
                   bolt.get(f"/v1/iterations/{iid}/output"),
                   bolt.get(f"/v1/iterations/{iid}/output", params={"follow": "true"}),
                   bolt.post(f"/v1/iterations/{iid}/cancel"),
                   bolt.get(f"/v1/suites/{suite}"),
                   bolt.post(f"/v1/suites/{suite}/cancel"),
                   bolt.get("/v1/events/iterations", params={"suite": suite})]
        for r in answers:
            body = is_problem(r, 404)
            assert set(body) == {"type", "title", "status", "detail", "instance",
                                 "request_id"}, who
            assert body["detail"] in (f"no iteration {iid!r}", f"no suite {suite!r}"), who
    assert bolt.get("/v1/iterations", params={"suite": "mine"}).json()["items"] == []
    is_problem(bolt.get("/v1/iterations", params={"tenant": "acme"}), 403)
    is_problem(bolt.post("/v1/batches", json={"iterations": [it("x")], "tenant": "acme"}), 403)


def test_an_admin_sees_every_tenant_and_names_one_where_an_id_is_shared(admin, acme, bolt):
    submit(acme, "both", it("dup"))
    submit(bolt, "both", it("dup"))
    ended(acme, "dup")
    is_problem(admin.get("/v1/iterations/dup"), 400)  # two tenants' dup: say whose
    assert admin.get("/v1/iterations/dup", params={"tenant": "bolt"}).json()["tenant"] == "bolt"
    tenants = {i["tenant"] for i in admin.get("/v1/iterations",
                                              params={"suite": "both"}).json()["items"]}
    assert tenants == {"acme", "bolt"}
    r = admin.post("/v1/batches", json={"iterations": [it("for-bolt")], "tenant": "bolt"})
    assert r.status_code == 201 and bolt.get("/v1/iterations/for-bolt").status_code == 200


# ---- limits and the fleet --------------------------------------------------------------------
def test_only_an_admin_sizes_a_limit_and_a_batch_only_holds_it(admin, acme):
    r = admin.put("/v1/fleet/limits/ci-db", json={"value": 1})
    assert r.status_code == 200 and r.json()["limits"]["ci-db"] == 1
    bad = acme.post("/v1/batches", json={"iterations": [it("l0")], "limits": {"ci-db": 5}})
    is_problem(bad, 422)  # a batch has no limit sizes to give
    submit(acme, "held", *(it(f"l{n}", image="slow", limits=["ci-db"]) for n in range(3)))
    until(lambda: admin.get("/v1/fleet").json()["limits"]["ci-db"] == {"size": 1, "in_use": 1})
    counts = acme.get("/v1/suites/held").json()["counts"]
    assert counts == {"RUNNING": 1, "QUEUED": 2}  # the size an admin set holds them back
    assert admin.put("/v1/fleet/limits/ci-db", json={"value": 3}).status_code == 200
    until(lambda: acme.get("/v1/suites/held").json()["counts"] == {"RUNNING": 3})
    acme.post("/v1/suites/held/cancel")
    is_problem(admin.put("/v1/fleet/limits/bad name", json={"value": 1}), 422)
    is_problem(admin.put("/v1/fleet/limits/x", json={"value": -1}), 422)


def test_the_fleet_status_for_an_admin(admin):
    st = admin.get("/v1/fleet").json()
    hosts = {h["host"]: h for h in st["hosts"]}
    assert {"q1", "q2", "s1", "e1"} <= set(hosts) and hosts["q1"]["cpus"] == 8
    assert hosts["q1"]["accel"] == "sim" and "cpu_some_avg10" in hosts["q1"]["pressure"]
    assert st["counts"]["SUCCEEDED"] >= 1 and "acme" in st["tenants"] and st["as_of"] > 0
    assert st["limits"]["gpu"] == {"size": 2, "in_use": 0}  # sized by `tryfleet up --limit`


def test_bad_input_is_a_4xx_problem_and_records_nothing(acme, admin):
    def count():
        return len(admin.get("/v1/iterations", params={"tenant": "acme", "limit": 1000}
                             ).json()["items"])

    before = count()
    headers = {"Content-Type": "application/json"}
    cases = [
        (acme.post("/v1/batches", content=b'{"iterations": [', headers=headers), 422),
        (acme.post("/v1/batches", json={"iterations": [it("x", cpus="2")]}), 422),
        (acme.post("/v1/batches", json={"iterations": [{**it("x"), "extra": 1}]}), 422),
        (acme.post("/v1/batches", json={"iterations": []}), 422),
        (acme.post("/v1/batches", json={"iterations": [it(f"x{n}") for n in range(10_001)]}),
         422),
        (acme.post("/v1/batches", json={"iterations": [it("x", "a" * 200_000)]}), 422),
        (acme.post("/v1/batches", json={"iterations": [it("x", image="nosuch")]}), 422),
        (acme.post("/v1/batches", json={"iterations": [it("x", image="sim", cpus=16)]}), 403),
        (acme.post("/v1/batches", json={"iterations": [it("x", image="sim", mem_mib=40_000)]}),
         422),
        (acme.post("/v1/batches", json={"iterations": [it("x", mem_mib=1 << 30)]}), 422),
        (acme.post("/v1/batches", json={"suite": "a/b", "iterations": [it("x")]}), 422),
        (acme.post("/v1/batches", json={"iterations": [{**it("x"), "files": {
            "/a": {"b64": "not base64!"}}}]}), 422),
        (acme.post("/v1/iterations", json={"image": "echo"}), 422),
    ]
    for r, status in cases:
        body = is_problem(r, status)
        assert body["status"] < 500
    assert cases[6][0].json()["type"].endswith("cannot-place")
    assert cases[7][0].json()["rule"] == "max_cpus"
    assert count() == before  # nothing recorded
    # A body over the size limit is refused from its Content-Length, before it is read.
    host, port = acme.base_url.host, acme.base_url.port
    with socket.create_connection((host, port)) as s:
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 999999999999\r\n\r\n{}")
        assert s.recv(4096).split(b"\r\n")[0].startswith(b"HTTP/1.1 413 ")


def test_a_failing_command_is_failed_not_an_error(acme):
    submit(acme, "fails", it("f", "false"))
    got = ended(acme, "f")
    assert (got["state"], got["exit_code"]) == ("FAILED", 1)


# ---- a real VM -------------------------------------------------------------------------------
@pytest.fixture
def real_host(api, data_dir):
    """A real node agent (libvirt, the built base image) joins the module's fleet as host
    `vm-host`; the only host that can run image "base". Its data dir: next to the real one
    (QEMU's user must reach the disks), sharing images, snapshots and run/."""
    from tryfleet.nodeagent.actor import start_node_actor

    with own_data_dir(data_dir) as own:
        node = start_node_actor(str(own), "vm-host", detached=False)
        until(lambda: any(h["host"] == "vm-host" and h["cpus"]
                          for h in ray.get(api.sched.status.remote(False, False))["hosts"]),
              120)
        yield node
        ray.get(node.shutdown.remote(), timeout=120)
        ray.kill(node, no_restart=True)


@pytest.mark.vm
def test_a_real_vm_through_the_api(real_host, acme, admin):
    files = {"/root/in.txt": "6\n", "/root/raw.bin": {"b64": "AAEC"}}
    submit(acme, "vm", it("vm1", "python3", "-c", "print(6*7); import sys; "
                          "sys.stdout.write(open('/root/in.txt').read())", image="base",
                          timeout_s=300, files=files))
    (end,) = events(acme, "/v1/events/iterations", want=1, params={"suite": "vm"},
                    timeout_s=300)
    assert end["data"]["id"] == "vm1" and end["data"]["state"] == "SUCCEEDED"
    got = acme.get("/v1/iterations/vm1").json()
    assert got["stdout"] == "42\n6\n" and got["exit_code"] == 0
    assert admin.get("/v1/iterations/vm1", params={"tenant": "acme"}).json()["host"] == \
        "vm-host"
