"""/v1/sandboxes over the app with a fleet in this process (apifleet.py: the real scheduler,
a node agent on the fake hypervisor): each route's answer, its refusals, and what it records.
The same routes over real HTTP, Ray and VMs: tests/integration/test_api_sandboxes.py."""

import base64
import json

import pytest

from tryfleet.gateway.keys import Scope

from .apifleet import api_fleet


@pytest.fixture
def api(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    with api_fleet(tmp_path) as a:
        yield a


@pytest.fixture
def acme(api):
    return api.key("acme")


@pytest.fixture
def box(api, acme):
    r = api.post("/v1/sandboxes", json={"timeout_s": 60, "metadata": {"pr": "7"}},
                 headers=acme)
    assert r.status_code == 201, r.text
    return r.json()


def events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if not ln.startswith(":")]
        kind = next((ln[7:] for ln in lines if ln.startswith("event: ")), None)
        data = next((ln[6:] for ln in lines if ln.startswith("data: ")), None)
        if kind:
            out.append((kind, json.loads(data) if data else {}))
    return out


def test_create_records_the_request_and_the_key(api, acme, box):
    assert box["state"] == "open" and box["tenant"] == "acme" and box["host"] is None
    assert box["metadata"] == {"pr": "7"} and box["request_id"].startswith("req_")
    assert box["key_id"] and box["expires_at"] > box["created_at"]
    got = api.get(f"/v1/sandboxes/{box['id']}", headers=acme).json()
    assert got == box
    assert [b["id"] for b in api.get("/v1/sandboxes", headers=acme).json()["items"]] == [
        box["id"]]


def test_exec_in_text_and_base64(api, acme, box):
    url = f"/v1/sandboxes/{box['id']}/exec"
    r = api.post(url, json={"argv": ["sh", "-c", "echo $((6*7)); printf '\\377' >&2"]},
                 headers=acme).json()
    assert (r["exit_code"], r["stdout"], r["stderr"], r["encoding"]) == (0, "42\n", "\ufffd",
                                                                         "text")
    r = api.post(url + "?encoding=base64", json={"argv": ["printf", "\\377"]},
                 headers=acme).json()
    assert base64.b64decode(r["stdout"]) == b"\xff" and r["encoding"] == "base64"
    r = api.post(url, json={"argv": ["cat"], "stdin_b64": base64.b64encode(b"\x00\x01").decode(),
                            "encoding": "base64"}, headers=acme).json()
    assert base64.b64decode(r["stdout"]) == b"\x00\x01"


def test_streamed_exec_sends_started_output_and_exit(api, acme, box):
    r = api.post(f"/v1/sandboxes/{box['id']}/exec/stream",
                 json={"argv": ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"]},
                 headers=acme)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    evs = events(r.text)
    assert evs[0] == ("started", {"sandbox": box["id"], "argv": evs[0][1]["argv"]})
    assert [d["data"] for k, d in evs if k == "stdout"] == ["1\n", "2\n", "3\n"]
    assert evs[-1][0] == "exit" and evs[-1][1]["exit_code"] == 0


def test_files_up_down_and_listed(api, acme, box):
    data = bytes(range(256)) * 1000
    url = f"/v1/sandboxes/{box['id']}/files"
    put = api.put(url, params={"path": "/root/d/blob.bin", "mode": "0600"}, content=data,
                  headers=acme)
    assert put.status_code == 200 and put.json()["size"] == len(data)
    got = api.get(url, params={"path": "/root/d/blob.bin"}, headers=acme)
    assert got.status_code == 200 and got.content == data
    listing = api.get(url + "/list", params={"path": "/root/d"}, headers=acme).json()
    assert [(e["name"], e["type"], e["size"], e["mode"]) for e in listing["entries"]] == [
        ("blob.bin", "file", len(data), 0o600)]
    missing = api.get(url, params={"path": "/root/nope"}, headers=acme)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


def test_an_upload_larger_than_a_chunk_arrives_whole(api, acme, box, monkeypatch):
    from tryfleet.gateway.routes import sandbox_files

    monkeypatch.setattr(sandbox_files, "CHUNK_BYTES", 1000)
    data = bytes(range(256)) * 20  # 5120 bytes: six chunks, then a move into place
    url = f"/v1/sandboxes/{box['id']}/files"
    assert api.put(url, params={"path": "/root/big"}, content=data,
                   headers=acme).status_code == 200
    assert api.get(url, params={"path": "/root/big"}, headers=acme).content == data
    names = [e["name"] for e in api.get(url + "/list", params={"path": "/root"},
                                        headers=acme).json()["entries"]]
    assert names == ["big"]  # no spare file left beside it


@pytest.mark.parametrize("path", ["relative", "/root/../etc/passwd", "/root//x", "/root/./x"])
def test_paths_must_be_absolute_and_normalised(api, acme, box, path):
    url = f"/v1/sandboxes/{box['id']}/files"
    for r in (api.get(url, params={"path": path}, headers=acme),
              api.put(url, params={"path": path}, content=b"x", headers=acme),
              api.get(url + "/list", params={"path": path}, headers=acme)):
        assert r.status_code == 400 and r.json()["type"].endswith("bad-path")


def test_timeout_and_delete(api, acme, box):
    r = api.post(f"/v1/sandboxes/{box['id']}/timeout", json={"timeout_s": 3600}, headers=acme)
    assert r.status_code == 200 and r.json()["expires_at"] > box["expires_at"] + 3000
    assert api.delete(f"/v1/sandboxes/{box['id']}", headers=acme).status_code == 204
    assert api.delete(f"/v1/sandboxes/{box['id']}", headers=acme).status_code == 204
    closed = api.get(f"/v1/sandboxes/{box['id']}", headers=acme).json()
    assert (closed["state"], closed["close_reason"]) == ("closed", "closed by request")
    r = api.post(f"/v1/sandboxes/{box['id']}/exec", json={"argv": ["true"]}, headers=acme)
    assert r.status_code == 404 and "closed" in r.json()["detail"]


def test_another_tenant_sees_nothing(api, box):
    other = api.key("globex")
    sid = box["id"]
    nobody = api.get("/v1/sandboxes/sbx-0000000000000000", headers=other).json()
    for method, url, kw in [
        ("get", f"/v1/sandboxes/{sid}", {}),
        ("post", f"/v1/sandboxes/{sid}/exec", {"json": {"argv": ["true"]}}),
        ("post", f"/v1/sandboxes/{sid}/exec/stream", {"json": {"argv": ["true"]}}),
        ("put", f"/v1/sandboxes/{sid}/files", {"params": {"path": "/x"}, "content": b"x"}),
        ("get", f"/v1/sandboxes/{sid}/files", {"params": {"path": "/etc/hostname"}}),
        ("get", f"/v1/sandboxes/{sid}/files/list", {"params": {"path": "/"}}),
        ("post", f"/v1/sandboxes/{sid}/timeout", {"json": {"timeout_s": 5}}),
        ("delete", f"/v1/sandboxes/{sid}", {}),
    ]:
        r = getattr(api, method)(url, headers=other, **kw)
        assert r.status_code == 404, (method, url, r.text)
        assert r.json()["detail"].replace(sid, "X") == nobody["detail"].replace(
            "sbx-0000000000000000", "X")
    assert api.get("/v1/sandboxes", headers=other).json()["items"] == []


def test_keys_scopes_and_policy(api, acme, box):
    assert api.get("/v1/sandboxes").status_code == 401
    reader = api.key("acme", Scope.READ)
    assert api.get(f"/v1/sandboxes/{box['id']}", headers=reader).status_code == 200
    r = api.post("/v1/sandboxes", json={}, headers=reader)
    assert r.status_code == 403 and "sandbox" in r.json()["detail"]
    (api.data_dir / "policy.toml").write_text("[tenant.acme]\nmax_cpus = 1\n"
                                              "max_sandboxes = 1\n")
    api.app.state.policies._checked = 0.0  # read the file now, not within the second
    r = api.post("/v1/sandboxes", json={"cpus": 2}, headers=acme)
    assert r.status_code == 403 and r.json()["rule"] == "max_cpus"
    r = api.post("/v1/sandboxes", json={}, headers=acme)
    assert r.status_code == 429 and (r.json()["limit"], r.json()["value"]) == (
        "max_sandboxes", 1)


@pytest.mark.parametrize("body", [
    "not json", {"cpus": "two"}, {"cpus": 1.5}, {"cpus": 10**9}, {"image": "../etc"},
    {"image": "no-such-image"}, {"mem_mib": 1}, {"timeout_s": -1}, {"metadata": {"k": 1}},
    {"surprise": True}, {"wait_s": 10_000}, [1, 2],
])
def test_bad_create_bodies_are_4xx_problems_and_create_nothing(api, acme, body):
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    r = api.post("/v1/sandboxes", headers={**acme, "content-type": "application/json"}, **kw)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert api.get("/v1/sandboxes?state=all", headers=acme).json()["items"] == []


@pytest.mark.parametrize("body", [
    {"argv": []}, {"argv": "ls"}, {"argv": ["a\x00b"]}, {"argv": ["ls"], "cwd": "/a/../b"},
    {"argv": ["ls"], "env": {"A=B": "c"}}, {"argv": ["ls"], "stdin": "x", "stdin_b64": "eA=="},
    {"argv": ["ls"], "stdin_b64": "not base64!"}, {"argv": ["ls"], "encoding": "latin-1"},
    {"argv": ["ls"], "timeout_s": 0},
])
def test_bad_exec_bodies_are_4xx_problems(api, acme, box, body):
    for url in (f"/v1/sandboxes/{box['id']}/exec", f"/v1/sandboxes/{box['id']}/exec/stream"):
        r = api.post(url, json=body, headers=acme)
        assert 400 <= r.status_code < 500, (url, body, r.text)
        assert r.headers["content-type"] == "application/problem+json"


def test_a_sandbox_whose_vm_died_is_closed_and_answers_gone(api, acme, box):
    node = api.fleet.node_actor.svc
    node.node.hv.crash(node.node.live()[0])
    r = api.post(f"/v1/sandboxes/{box['id']}/exec", json={"argv": ["true"]}, headers=acme)
    assert r.status_code == 404 and "gone" in r.json()["detail"]
    got = api.get(f"/v1/sandboxes/{box['id']}", headers=acme).json()
    assert got["state"] == "closed" and "gone from its host" in got["close_reason"]


def test_the_openapi_document_describes_every_sandbox_route(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/v1/sandboxes", "/v1/sandboxes/{sid}", "/v1/sandboxes/{sid}/timeout",
            "/v1/sandboxes/{sid}/exec", "/v1/sandboxes/{sid}/exec/stream",
            "/v1/sandboxes/{sid}/files", "/v1/sandboxes/{sid}/files/list"} <= set(paths)
    assert "text/event-stream" in paths["/v1/sandboxes/{sid}/exec/stream"]["post"][
        "responses"]["200"]["content"]


def test_a_stream_whose_sandbox_is_gone_ends_with_an_error_event(api, acme, box):
    node = api.fleet.node_actor.svc
    node.node.hv.crash(node.node.live()[0])
    r = api.post(f"/v1/sandboxes/{box['id']}/exec/stream", json={"argv": ["true"]},
                 headers=acme)
    kinds = [k for k, _ in events(r.text)]
    assert kinds == ["started", "error"]
    problem = events(r.text)[-1][1]
    assert problem["status"] == 404 and "gone" in problem["detail"]
    assert api.get(f"/v1/sandboxes/{box['id']}", headers=acme).json()["state"] == "closed"


def test_a_sandbox_still_being_opened_is_not_taken_for_gone(api, acme):
    import time

    from tryfleet.scheduler.sandboxes import SandboxRecord

    api.app.state.sandboxes.record(SandboxRecord(
        "sbx-opening", "acme", "base", 1, 512, None, "h1", "open", time.time(),
        time.time() + 60))
    r = api.post("/v1/sandboxes/sbx-opening/exec", json={"argv": ["true"]}, headers=acme)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert api.get("/v1/sandboxes/sbx-opening", headers=acme).json()["state"] == "open"


def test_a_body_not_sent_as_json_is_refused_saying_how_to_send_it(api, acme):
    # curl's -d sends application/x-www-form-urlencoded unless told otherwise
    r = api.post("/v1/sandboxes", content=b'{"image": "base"}', headers={
        **acme, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422
    assert "Content-Type: application/json" in r.json()["detail"] and "--json" in \
        r.json()["detail"]
    assert api.get("/v1/sandboxes", headers=acme).json()["items"] == []
