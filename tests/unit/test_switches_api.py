"""Kill switches over real HTTP (the real gateway app under uvicorn, the real scheduler and
ledger, one node agent on the fake hypervisor; no Ray, no VM): admins only, problems for bad
bodies and unknown targets, a frozen tenant refused on the tryfleet API, the E2B API and MCP
alike until thawed, the audit trail written first (and the flip refused without it), and the
CLI through the SDK."""

import itertools
import json

import httpx
import pytest

from tests.mcpclients import over_http, refusal, using
from tryfleet.audit import Audit, Filter
from tryfleet.cli import main

from .servedapi import served_api

BOX = {"image": "base", "mem_mib": 256}
ITERATION = {"id": "i-1", "image": "base", "command": ["true"]}
TENANTS = itertools.count(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRYFLEET_ACCEL", "tcg")
        with served_api(tmp_path_factory.mktemp("switches")) as s:
            s.app.state.audit = Audit(s.data_dir)
            yield s


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def call(served, method, path, key=None, **kw):
    return httpx.request(method, served.url + path, headers=bearer(key or served.admin),
                         timeout=60, **kw)


def flip(served, tenant, strength="freeze", **kw):
    r = call(served, "POST", "/v1/switches", json={"level": "tenant", "target": tenant,
                                                   "strength": strength, **kw})
    assert r.status_code in (200, 201), r.text
    return r.json()


def thaw(served, tenant):
    r = call(served, "POST", "/v1/switches/lift", json={"level": "tenant", "target": tenant})
    assert r.status_code == 200, r.text


@pytest.fixture
def tenant(served):
    """A fresh tenant with a key (sandbox, batch), thawed at the end whatever happened."""
    name = f"tenant-{next(TENANTS)}"
    key = served.key(name)
    yield name, key
    call(served, "POST", "/v1/switches/lift", json={"level": "tenant", "target": name})


def test_a_tenant_key_may_neither_list_nor_flip_switches(served, tenant):
    _, key = tenant
    assert call(served, "GET", "/v1/switches", key).status_code == 403
    r = call(served, "POST", "/v1/switches", key, json={"level": "everything"})
    assert (r.status_code, r.headers["content-type"]) == (403, "application/problem+json")


@pytest.mark.parametrize("body", [{"level": "planet", "target": "x"},
                                  {"level": "tenant"},
                                  {"level": "everything", "target": "acme"},
                                  {"level": "tenant", "target": "acme", "strength": "melt"},
                                  {"level": "host", "target": "h1", "tenant": "acme"}])
def test_a_malformed_switch_is_a_422_problem(served, body):
    r = call(served, "POST", "/v1/switches", json=body)
    assert (r.status_code, r.json()["type"]) == (422, "urn:tryfleet:problem:invalid-request")


@pytest.mark.parametrize("level,target", [("tenant", "nobody"), ("key", "000000000000"),
                                          ("sandbox", "sbx-none"), ("iteration", "none"),
                                          ("host", "h9")])
def test_a_switch_on_a_target_nobody_knows_is_404(served, level, target):
    r = call(served, "POST", "/v1/switches", json={"level": level, "target": target})
    assert (r.status_code, r.json()["type"]) == (404, "urn:tryfleet:problem:not-found")


def test_a_frozen_tenant_cannot_open_a_sandbox_and_the_problem_names_the_switch(served, tenant):
    name, key = tenant
    got = flip(served, name, reason="incident 42", person="ana@laptop")
    r = call(served, "POST", "/v1/sandboxes", key, json=BOX)
    problem = r.json()
    assert (r.status_code, problem["type"]) == (403, "urn:tryfleet:problem:frozen")
    assert f"switch #{got['switch']['id']}" in problem["detail"]
    assert "cli:ana@laptop" in problem["detail"] and "incident 42" in problem["detail"]
    assert problem["switch"]["flipped_by"] == got["switch"]["flipped_by"]


def test_a_frozen_tenant_cannot_submit_iterations(served, tenant):
    name, key = tenant
    flip(served, name)
    r = call(served, "POST", "/v1/batches", key, json={"suite": "s", "iterations": [ITERATION]})
    assert (r.status_code, r.json()["type"]) == (403, "urn:tryfleet:problem:frozen")


def test_a_frozen_tenant_cannot_create_a_sandbox_through_the_e2b_api(served, tenant):
    name, key = tenant
    flip(served, name)
    r = httpx.post(served.url + "/v2/sandboxes", headers={"X-API-Key": key},
                   json={"templateID": "base"}, timeout=60)
    assert r.status_code == 403 and "frozen by switch" in r.json()["message"]


def test_a_frozen_tenant_cannot_create_a_sandbox_through_mcp(served, tenant):
    name, key = tenant
    flip(served, name)

    async def work(c):
        return await refusal(c, "create_sandbox", mem_mib=256)

    assert "frozen by switch" in using(over_http(served.url, key), work)


def test_a_thawed_tenant_opens_sandboxes_again(served, tenant):
    name, key = tenant
    flip(served, name)
    thaw(served, name)
    r = call(served, "POST", "/v1/sandboxes", key, json=BOX)
    assert r.status_code == 201, r.text
    call(served, "DELETE", f"/v1/sandboxes/{r.json()['id']}", key)


def test_a_freeze_lets_commands_run_on_in_an_open_sandbox(served, tenant):
    name, key = tenant
    box = call(served, "POST", "/v1/sandboxes", key, json=BOX).json()
    flip(served, name)
    r = call(served, "POST", f"/v1/sandboxes/{box['id']}/exec", key,
             json={"argv": ["echo", "still here"]})
    assert (r.status_code, r.json()["stdout"]) == (200, "still here\n"), r.text
    call(served, "DELETE", f"/v1/sandboxes/{box['id']}", key)


def test_killing_a_key_revokes_it_and_closes_its_sandboxes(served, tenant):
    _, key = tenant
    box = call(served, "POST", "/v1/sandboxes", key, json=BOX).json()
    r = call(served, "POST", "/v1/switches", json={"level": "key", "target": key.split("_")[1],
                                                   "strength": "kill"})
    assert (r.json()["key_revoked"], r.json()["sandboxes_closed"]) == (True, 1)
    assert call(served, "GET", f"/v1/sandboxes/{box['id']}").json()["state"] == "closed"
    assert call(served, "GET", "/v1/sandboxes", key).status_code == 401


def test_every_flip_and_lift_is_in_the_audit_trail_with_the_admin_key(served, tenant):
    name, _ = tenant
    got = flip(served, name, reason="why not")
    thaw(served, name)
    records = served.app.state.audit.select(Filter(tenant=name, action="switch.*"))
    assert [r.action for r in records] == ["switch.flip", "switch.lift"]
    assert records[0].actor == f"key:{served.admin.split('_')[1]}"
    assert json.loads(records[0].details)["reason"] == got["switch"]["reason"] == "why not"


def test_without_the_audit_trail_a_flip_is_refused_and_nothing_is_flipped(served, tenant):
    name, _ = tenant
    audit, served.app.state.audit = served.app.state.audit, None
    try:
        r = call(served, "POST", "/v1/switches", json={"level": "tenant", "target": name})
    finally:
        served.app.state.audit = audit
    assert r.status_code == 503
    assert all(s["target"] != name for s in call(served, "GET", "/v1/switches").json()["items"])


def test_the_cli_freezes_lists_and_thaws_a_tenant(served, tenant, capsys):
    name, key = tenant
    api = ["--url", served.url, "--api-key", served.admin]
    assert main(["freeze", "--tenant", name, "--reason", "incident 7", *api]) == 0
    assert main(["switches", *api]) == 0
    listed = capsys.readouterr().out
    assert f"tenant {name}" in listed and "incident 7" in listed and "cli:" in listed
    assert call(served, "POST", "/v1/sandboxes", key, json=BOX).status_code == 403
    assert main(["thaw", "--tenant", name, *api]) == 0
    assert main(["switches", "--json", *api]) == 0
    assert name not in capsys.readouterr().out.split("starts again", 1)[1]


def test_a_frozen_sandbox_runs_no_new_command_but_can_still_be_read(served, tenant):
    _, key = tenant
    box = call(served, "POST", "/v1/sandboxes", key, json=BOX).json()
    r = call(served, "POST", "/v1/switches", json={"level": "sandbox", "target": box["id"]})
    assert r.status_code == 201, r.text
    refused = call(served, "POST", f"/v1/sandboxes/{box['id']}/exec", key, json={"argv": ["true"]})
    assert (refused.status_code, refused.json()["type"]) == (403, "urn:tryfleet:problem:frozen")
    listed = call(served, "GET", f"/v1/sandboxes/{box['id']}/files/list?path=/root", key)
    assert listed.status_code == 200, listed.text
    e2b = httpx.post(f"{served.url}/files?path=/root/a.txt", content=b"x", timeout=60,
                     headers={"E2b-Sandbox-Id": box["id"], "X-API-KEY": key})
    assert e2b.status_code == 403 and "frozen by switch" in e2b.json()["message"]
    r = call(served, "DELETE", f"/v1/switches/{r.json()['switch']['id']}")
    assert r.status_code == 200, r.text
    ran = call(served, "POST", f"/v1/sandboxes/{box['id']}/exec", key, json={"argv": ["true"]})
    assert ran.status_code == 200, ran.text
    call(served, "DELETE", f"/v1/sandboxes/{box['id']}", key)


def test_e2bs_sdk_runs_no_new_command_in_a_frozen_sandbox(served, tenant):
    e2b = pytest.importorskip("e2b")
    _, key = tenant
    sbx = e2b.Sandbox.create(timeout=120, api_key=key, api_url=served.url,
                             sandbox_url=served.url)
    try:
        r = call(served, "POST", "/v1/switches", json={"level": "sandbox",
                                                       "target": sbx.sandbox_id})
        assert r.status_code == 201, r.text
        with pytest.raises(e2b.SandboxException, match="frozen by switch"):
            sbx.commands.run("true")
    finally:
        sbx.kill()
