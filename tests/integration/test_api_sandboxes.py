"""/v1/sandboxes over real HTTP on loopback against a real fleet: Ray started in this process,
the real node agent (real VMs of the built base image), the scheduler and the gateway actor on
a free port, keys made with KeyStore. Few VMs, small guests (2 cores here)."""

import base64
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.wire import unpack_list

from .vmfleet import vm_fleet

HOST = "apitest"
GUEST = {"image": "base", "cpus": 1, "mem_mib": 256, "timeout_s": 600}
POLICY = """
[tenant.tight]
max_cpus = 1
images = ["base"]

[tenant.quota]
max_sandboxes = 1
"""


class Fleet:
    def __init__(self, url: str, data: Path, keys: KeyStore, node: object) -> None:
        self.url, self.data, self.keys, self.node = url, data, keys, node
        self.http = httpx.Client(base_url=url, timeout=120)
        self.actors: list[object] = []  # not detached: alive while a handle is held

    def key(self, tenant: str, *scopes: Scope, **kw) -> dict[str, str]:
        _, token = self.keys.create(tenant, frozenset(scopes or {Scope.SANDBOX}),
                                    created_by="test", **kw)
        return {"Authorization": f"Bearer {token}"}

    def open(self, headers: dict[str, str], **body) -> dict:
        r = self.http.post("/v1/sandboxes", json={**GUEST, **body}, headers=headers)
        assert r.status_code == 201, r.text
        return r.json()

    def all_ids(self, headers: dict[str, str]) -> list[str]:
        return [b["id"] for b in self.http.get("/v1/sandboxes", params={"state": "all"},
                                               headers=headers).json()["items"]]


@pytest.fixture(scope="module")
def fleet(data_dir):
    with vm_fleet(data_dir, HOST, POLICY) as v:
        f = Fleet(v.url, v.data, v.keys, v.node)
        f.actors = list(v.actors)
        yield f
        f.http.close()


@pytest.fixture(scope="module")
def acme(fleet):
    return fleet.key("acme")


@pytest.fixture(scope="module")
def box(fleet, acme):
    return fleet.open(acme, metadata={"purpose": "api test"})


def sse(response: httpx.Response) -> list[tuple[float, str, dict]]:
    """(arrival time, event, data) of each event as it arrives."""
    out, kind, data = [], None, None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and kind is not None:
            out.append((time.monotonic(), kind, data or {}))
            kind, data = None, None
    return out


def test_create_answers_the_sandbox_as_recorded(fleet, acme, box):
    assert (box["state"], box["tenant"], box["cpus"], box["mem_mib"]) == ("open", "acme", 1,
                                                                          256)
    assert box["key_id"] and box["request_id"] and box["metadata"] == {"purpose": "api test"}
    assert fleet.http.get(f"/v1/sandboxes/{box['id']}", headers=acme).json() == box


def test_exec_python_prints_42(fleet, acme, box):
    r = fleet.http.post(f"/v1/sandboxes/{box['id']}/exec",
                        json={"argv": ["python3", "-c", "print(6*7)"]}, headers=acme)
    assert r.status_code == 200, r.text
    assert (r.json()["stdout"], r.json()["exit_code"]) == ("42\n", 0)


def test_streamed_exec_arrives_as_the_command_prints(fleet, acme, box):
    with fleet.http.stream("POST", f"/v1/sandboxes/{box['id']}/exec/stream", headers=acme,
                           json={"argv": ["sh", "-c",
                                          "for i in 1 2 3; do echo $i; sleep 1; done"]}) as r:
        assert r.status_code == 200
        evs = sse(r)
    kinds = [k for _, k, _ in evs]
    assert kinds[0] == "started" and kinds[-1] == "exit" and evs[-1][2]["exit_code"] == 0
    outs = [(t, d["data"]) for t, k, d in evs if k == "stdout"]
    assert [d for _, d in outs] == ["1\n", "2\n", "3\n"]
    assert evs[-1][0] - outs[0][0] > 1.0  # the first came while the command still ran


def test_files_round_trip_byte_for_byte_and_list(fleet, acme, box):
    url = f"/v1/sandboxes/{box['id']}/files"
    text, blob = "héllo\n".encode(), os.urandom(300_000) + bytes(range(256))
    for path, data in (("/root/in/hello.txt", text), ("/root/in/blob.bin", blob)):
        put = fleet.http.put(url, params={"path": path}, content=data, headers=acme)
        assert put.status_code == 200, put.text
        got = fleet.http.get(url, params={"path": path}, headers=acme)
        assert got.status_code == 200 and got.content == data
    listing = fleet.http.get(url + "/list", params={"path": "/root/in"}, headers=acme).json()
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [
        ("blob.bin", "file", len(blob)), ("hello.txt", "file", len(text))]


def test_a_removed_file_is_gone_and_a_directory_needs_recursive(fleet, acme, box):
    url = f"/v1/sandboxes/{box['id']}/files"
    fleet.http.put(url, params={"path": "/root/rm/a.txt"}, content=b"a", headers=acme)
    assert fleet.http.delete(url, params={"path": "/root/rm"}, headers=acme).status_code == 409
    assert fleet.http.delete(url, params={"path": "/root/rm/a.txt"},
                             headers=acme).status_code == 204
    assert fleet.http.get(url, params={"path": "/root/rm/a.txt"}, headers=acme).status_code == 404
    assert fleet.http.delete(url, params={"path": "/root/rm/a.txt"},
                             headers=acme).status_code == 404


def test_extend_moves_the_expiry(fleet, acme, box):
    r = fleet.http.post(f"/v1/sandboxes/{box['id']}/timeout", json={"timeout_s": 900},
                        headers=acme)
    assert r.status_code == 200 and r.json()["expires_at"] > box["expires_at"]


def test_another_tenants_key_gets_404_for_every_route(fleet, box):
    other, sid = fleet.key("globex"), box["id"]
    unknown = fleet.http.get("/v1/sandboxes/sbx-ffffffffffffffff", headers=other).json()
    routes = [
        ("GET", f"/v1/sandboxes/{sid}", {}),
        ("POST", f"/v1/sandboxes/{sid}/exec", {"json": {"argv": ["true"]}}),
        ("POST", f"/v1/sandboxes/{sid}/exec/stream", {"json": {"argv": ["true"]}}),
        ("PUT", f"/v1/sandboxes/{sid}/files", {"params": {"path": "/tmp/x"}, "content": b"x"}),
        ("GET", f"/v1/sandboxes/{sid}/files", {"params": {"path": "/etc/hostname"}}),
        ("GET", f"/v1/sandboxes/{sid}/files/list", {"params": {"path": "/"}}),
        ("DELETE", f"/v1/sandboxes/{sid}/files", {"params": {"path": "/etc/hostname"}}),
        ("POST", f"/v1/sandboxes/{sid}/timeout", {"json": {"timeout_s": 5}}),
        ("DELETE", f"/v1/sandboxes/{sid}", {}),
    ]
    for method, url, kw in routes:
        r = fleet.http.request(method, url, headers=other, **kw)
        assert r.status_code == 404, (method, url, r.text)
        assert set(r.json()) == set(unknown)
        assert r.json()["detail"] == unknown["detail"].replace("sbx-ffffffffffffffff", sid)
    assert sid not in fleet.all_ids(other)


def test_no_key_revoked_key_expired_key(fleet, box):
    assert fleet.http.get("/v1/sandboxes").status_code == 401
    info, token = fleet.keys.create("acme", frozenset({Scope.SANDBOX}), created_by="test")
    ok = {"Authorization": f"Bearer {token}"}
    assert fleet.http.get(f"/v1/sandboxes/{box['id']}", headers=ok).status_code == 200
    fleet.keys.revoke(info.id, by="test")
    assert fleet.http.get(f"/v1/sandboxes/{box['id']}", headers=ok).status_code == 401
    short = fleet.key("acme", expires_at=time.time() + 1.0)
    assert fleet.http.get(f"/v1/sandboxes/{box['id']}", headers=short).status_code == 200
    time.sleep(1.1)  # the expiry is a time: nothing to wait for but the clock
    assert fleet.http.get(f"/v1/sandboxes/{box['id']}", headers=short).status_code == 401


def test_a_key_without_the_sandbox_scope_is_403_naming_it(fleet):
    r = fleet.http.post("/v1/sandboxes", json=GUEST, headers=fleet.key("acme", Scope.BATCH))
    assert r.status_code == 403 and "`sandbox`" in r.json()["detail"]


@pytest.mark.parametrize("body", [
    "{not json", {"cpus": "two"}, {"cpus": 1.5}, {"cpus": 100_000}, {"mem_mib": 10},
    {"image": "no-such-image"}, {"image": "../../etc"}, {"timeout_s": "soon"},
    {"metadata": ["a"]}, {"unknown_field": 1}, [],
])
def test_bad_bodies_are_4xx_problems_and_create_nothing(fleet, acme, body):
    before = fleet.all_ids(acme)
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    r = fleet.http.post("/v1/sandboxes", headers={**acme, "content-type": "application/json"},
                        **kw)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json" and r.json()["detail"]
    assert fleet.all_ids(acme) == before


@pytest.mark.parametrize("path", ["/root/../etc/shadow", "etc/passwd", "/root//x", "/a/./b"])
def test_paths_with_dot_dot_or_not_absolute_are_400(fleet, acme, box, path):
    url = f"/v1/sandboxes/{box['id']}/files"
    for r in (fleet.http.get(url, params={"path": path}, headers=acme),
              fleet.http.put(url, params={"path": path}, content=b"x", headers=acme),
              fleet.http.get(url + "/list", params={"path": path}, headers=acme)):
        assert r.status_code == 400 and r.json()["type"].endswith("bad-path")


def test_bad_exec_bodies_are_4xx(fleet, acme, box):
    url = f"/v1/sandboxes/{box['id']}/exec"
    for body in ({"argv": []}, {"argv": "true"}, {"argv": ["true"], "cwd": "/tmp/../x"},
                 {"argv": ["true"], "timeout_s": -1}):
        r = fleet.http.post(url, json=body, headers=acme)
        assert 400 <= r.status_code < 500, (body, r.text)


def test_policy_denial_is_403_naming_the_rule(fleet):
    tight = fleet.key("tight")
    r = fleet.http.post("/v1/sandboxes", json={**GUEST, "cpus": 2}, headers=tight)
    assert r.status_code == 403 and r.json()["rule"] == "max_cpus"
    assert "max_cpus" in r.json()["detail"] and fleet.all_ids(tight) == []


def test_quota_of_sandboxes_is_429_naming_the_limit(fleet):
    quota = fleet.key("quota")
    first = fleet.open(quota)
    r = fleet.http.post("/v1/sandboxes", json=GUEST, headers=quota)
    assert r.status_code == 429, r.text
    assert (r.json()["limit"], r.json()["value"]) == ("max_sandboxes", 1)
    assert fleet.all_ids(quota) == [first["id"]]
    assert fleet.http.delete(f"/v1/sandboxes/{first['id']}", headers=quota).status_code == 204


def test_delete_closes_it_and_deleting_again_is_204(fleet, acme):
    import ray

    sb = fleet.open(acme)
    assert fleet.http.delete(f"/v1/sandboxes/{sb['id']}", headers=acme).status_code == 204
    assert fleet.http.delete(f"/v1/sandboxes/{sb['id']}", headers=acme).status_code == 204
    got = fleet.http.get(f"/v1/sandboxes/{sb['id']}", headers=acme).json()
    assert (got["state"], got["close_reason"]) == ("closed", "closed by request")
    assert sb["id"] not in unpack_list(str, ray.get(fleet.node.sandbox_list.remote(HOST)))
    r = fleet.http.post(f"/v1/sandboxes/{sb['id']}/exec", json={"argv": ["true"]},
                        headers=acme)
    assert r.status_code == 404


def test_a_sandbox_left_past_its_timeout_is_destroyed_and_recorded_closed(fleet, acme):
    import ray

    sb = fleet.open(acme, timeout_s=3)
    deadline = time.monotonic() + 60
    while (got := fleet.http.get(f"/v1/sandboxes/{sb['id']}", headers=acme).json())[
            "state"] == "open":
        assert time.monotonic() < deadline, "not closed 60 s after its timeout"
        time.sleep(0.5)
    assert got["close_reason"] == "its timeout passed"
    assert sb["id"] not in unpack_list(str, ray.get(fleet.node.sandbox_list.remote(HOST)))


def test_base64_output_is_lossless(fleet, acme, box):
    r = fleet.http.post(f"/v1/sandboxes/{box['id']}/exec?encoding=base64",
                        json={"argv": ["printf", "\\377\\000ok"]}, headers=acme).json()
    assert base64.b64decode(r["stdout"]) == b"\xff\x00ok" and r["encoding"] == "base64"


def test_a_client_that_leaves_a_stream_takes_its_command_with_it(fleet, acme, box):
    with fleet.http.stream("POST", f"/v1/sandboxes/{box['id']}/exec/stream", headers=acme,
                           json={"argv": ["sh", "-c", "echo up; sleep 60"]}) as r:
        for line in r.iter_lines():
            if line.startswith("event: stdout"):
                break  # and hang up
    started = time.monotonic()
    r = fleet.http.post(f"/v1/sandboxes/{box['id']}/exec", json={"argv": ["true"]},
                        headers=acme)
    assert r.status_code == 200 and time.monotonic() - started < 30  # not after the sleep
