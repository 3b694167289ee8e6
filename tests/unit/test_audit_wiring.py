"""What the gateway and the scheduler write to the audit trail (gateway/auditing.py,
scheduler/audit_records.py, the KeyStore's key records), over the app with a fleet in this
process (apifleet.py: the real scheduler, a node agent on the fake hypervisor) and its own
trail. The same over real HTTP and Ray: tests/integration/test_audit_api.py."""

import hashlib
import json

import pytest

from tests.waiting import until
from tryfleet.audit import Audit, AuditUnavailable, Filter
from tryfleet.gateway.auditing import trace_id_of
from tryfleet.gateway.keys import KeyStore, Scope, ensure_local_admin
from tryfleet.scheduler import audit_records
from tryfleet.scheduler import events as ev
from tryfleet.scheduler.records import Iteration, Row
from tryfleet.wire import ExecReply, ExecRequest, Outcome, State, pack, unpack

from .apifleet import api_fleet

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def api(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    with api_fleet(tmp_path, audit=True) as a:
        yield a


@pytest.fixture
def acme(api):
    return api.key("acme", Scope.SANDBOX)


@pytest.fixture
def box(api, acme):
    r = api.post("/v1/sandboxes", json={"timeout_s": 60}, headers=acme)
    assert r.status_code == 201, r.text
    return r.json()


def trace(api, resp):
    """The request's records, once its api.response is on disk (written as its answer left,
    not waited for)."""
    rid = resp.headers["x-request-id"]
    until(lambda: any(r.action == "api.response" for r in api.audit.trace(rid)), 10)
    return api.audit.trace(rid)


def details(record):
    return json.loads(record.details)


# ---- the trace id ----------------------------------------------------------------------------
def test_the_trace_id_is_the_traceparents():
    assert trace_id_of(TRACEPARENT) == "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize("header", ["", "junk", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                                    "00-4bf92f35-00f067aa0ba902b7-01"])
def test_no_valid_traceparent_gives_no_trace_id(header):
    assert trace_id_of(header) == ""


# ---- API calls -------------------------------------------------------------------------------
def test_an_exec_is_recorded_request_command_end_and_response_in_order(api, acme, box):
    r = api.post(f"/v1/sandboxes/{box['id']}/exec", headers=acme,
                 json={"argv": ["python3", "-c", "print(6*7)"]})
    assert [x.action for x in trace(api, r)] == ["api.request", "exec.start", "exec.end",
                                                 "api.response"]


def test_exec_end_has_the_exit_code_and_the_digests_of_the_output(api, acme, box):
    r = api.post(f"/v1/sandboxes/{box['id']}/exec", headers=acme,
                 json={"argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    end = next(x for x in trace(api, r) if x.action == "exec.end")
    got = details(end)
    assert (end.outcome, got["exit_code"]) == ("exit:3", 3)
    assert (got["stdout_bytes"], got["stdout_sha256"]) == (4, hashlib.sha256(
        b"out\n").hexdigest())
    assert got["stderr_sha256"] == hashlib.sha256(b"err\n").hexdigest()


def test_every_record_of_a_request_names_tenant_key_request_and_trace(api, acme, box):
    r = api.post(f"/v1/sandboxes/{box['id']}/exec", json={"argv": ["true"]},
                 headers={**acme, "traceparent": TRACEPARENT})
    key_id = acme["Authorization"].split("_")[1]
    assert {(x.tenant, x.actor, x.trace_id) for x in trace(api, r)} == {
        ("acme", f"key:{key_id}", "4bf92f3577b34da6a3ce929d0e0e4736")}


def test_a_command_is_recorded_with_env_names_never_values(api, acme, box):
    r = api.post(f"/v1/sandboxes/{box['id']}/exec", headers=acme,
                 json={"argv": ["true"], "env": {"TOKEN": "hunter2"}, "cwd": "/tmp"})
    start = next(x for x in trace(api, r) if x.action == "exec.start")
    assert details(start) == {"argv": ["true"], "cwd": "/tmp", "env_names": ["TOKEN"],
                              "user": ""}
    assert "hunter2" not in start.details


def test_a_streamed_command_records_the_digests_of_what_streamed(api, acme, box):
    r = api.post(f"/v1/sandboxes/{box['id']}/exec/stream", headers=acme,
                 json={"argv": ["sh", "-c", "echo a; echo b"]})
    end = next(x for x in trace(api, r) if x.action == "exec.end")
    assert details(end)["stdout_sha256"] == hashlib.sha256(b"a\nb\n").hexdigest()


def test_the_request_is_recorded_with_its_route_template(api, acme, box):
    r = api.post(f"/v1/sandboxes/{box['id']}/exec", json={"argv": ["true"]}, headers=acme)
    first = trace(api, r)[0]
    assert details(first) == {"method": "POST", "route": "/v1/sandboxes/{sid}/exec"}


def test_a_call_without_a_valid_key_is_recorded_anonymous(api):
    r = api.get("/v1/sandboxes", headers={"Authorization": "Bearer nope"})
    assert [(x.action, x.tenant, x.actor, x.outcome) for x in trace(api, r)] == [
        ("api.request", "", "anonymous", ""), ("api.response", "", "anonymous", "401")]


def test_opening_a_sandbox_records_its_host_before_the_response(api, acme):
    r = api.post("/v1/sandboxes", json={"timeout_s": 60}, headers=acme)
    got = [(x.action, x.sandbox) for x in trace(api, r)]
    assert got == [("api.request", ""), ("sandbox.open", r.json()["id"]), ("api.response", "")]


def test_closing_a_sandbox_is_recorded(api, acme, box):
    r = api.delete(f"/v1/sandboxes/{box['id']}", headers=acme)
    assert [(x.action, x.sandbox) for x in trace(api, r)][1] == ("sandbox.close", box["id"])


def test_a_file_written_and_read_back_is_recorded_with_its_size_and_digest(api, acme, box):
    url = f"/v1/sandboxes/{box['id']}/files?path=/root/f.txt"
    wrote = trace(api, api.put(url, content=b"hello", headers=acme))[1]
    read = trace(api, api.get(url, headers=acme))[1]
    want = {"path": "/root/f.txt", "size_bytes": 5,
            "sha256": hashlib.sha256(b"hello").hexdigest()}
    assert (wrote.action, details(wrote), read.action, details(read)) == (
        "file.write", want, "file.read", want)


def test_a_policy_denial_is_recorded_naming_the_rule(api, acme):
    (api.data_dir / "policy.toml").write_text("[tenant.acme]\nmax_cpus = 1\n")
    api.client.app.state.policies.reload()
    r = api.post("/v1/sandboxes", json={"cpus": 2}, headers=acme)
    assert r.status_code == 403
    deny = trace(api, r)[1]
    assert (deny.action, deny.outcome, details(deny)["rule"]) == (
        "policy.deny", "max_cpus", "max_cpus")


def test_a_quota_reached_is_recorded_as_a_denial_naming_it(api, acme, box):
    (api.data_dir / "policy.toml").write_text("[tenant.acme]\nmax_sandboxes = 1\n")
    api.client.app.state.policies.reload()
    r = api.post("/v1/sandboxes", json={"timeout_s": 60}, headers=acme)
    assert r.status_code == 429
    assert [(x.action, x.outcome) for x in trace(api, r)][1] == ("policy.deny",
                                                                 "max_sandboxes")


def test_a_key_made_and_revoked_through_the_api_is_recorded(api):
    admin = api.key("ops", Scope.ADMIN)
    made = api.post("/v1/keys", json={"tenant": "acme", "scopes": ["read"]}, headers=admin)
    gone = api.delete(f"/v1/keys/{made.json()['id']}", headers=admin)
    got = [(x.action, x.tenant, details(x).get("key_id"))
           for x in trace(api, made) + trace(api, gone) if x.action.startswith("key.")]
    assert got == [("key.create", "acme", made.json()["id"]),
                   ("key.revoke", "acme", made.json()["id"])]


def test_a_trail_that_cannot_be_written_refuses_the_exec_with_503(api, acme, box):
    api.audit.close()
    r = api.post(f"/v1/sandboxes/{box['id']}/exec", headers=acme,
                 json={"argv": ["touch", "ran"]})
    assert (r.status_code, r.headers["content-type"], r.json()["title"]) == (
        503, "application/problem+json", "Audit unavailable")


def test_a_trail_that_cannot_be_written_runs_nothing(api, acme, box):
    api.audit.close()
    api.post(f"/v1/sandboxes/{box['id']}/exec", json={"argv": ["touch", "ran"]},
             headers=acme)
    # asked of its node directly (the fake guest's home, where a relative path lands)
    probe = api.fleet.node_actor.sandbox_exec("h1", box["id"],
                                              pack(ExecRequest(("test", "-e", "ran"))))
    assert unpack(ExecReply, probe).exit_code == 1


def test_an_iterations_states_and_command_are_in_its_submitting_requests_trace(api):
    batch = api.key("acme", Scope.BATCH, Scope.READ)
    r = api.post("/v1/iterations", headers=batch, json={
        "suite": "s", "image": "base", "command": ["sh", "-c", "echo hi"]})
    rid = r.headers["x-request-id"]
    until(lambda: any(x.outcome == "SUCCEEDED" for x in api.audit.trace(rid)), 30)
    got = [(x.action, x.outcome) for x in api.audit.trace(rid) if x.action != "api.response"]
    assert got == [("api.request", ""), ("iteration.state", "submitted"),  # (the response
                   ("iteration.state", "started"),  # may come anywhere after submitted)
                   ("iteration.command", "exit:0"), ("iteration.state", "SUCCEEDED")]


def test_an_iterations_command_carries_the_digest_its_host_computed(api):
    batch = api.key("acme", Scope.BATCH, Scope.READ)
    r = api.post("/v1/iterations", headers=batch, json={
        "suite": "s", "image": "base", "command": ["sh", "-c", "echo hi"]})
    rid = r.headers["x-request-id"]
    (cmd,) = until(lambda: [x for x in api.audit.trace(rid)
                            if x.action == "iteration.command"], 30)
    assert (cmd.iteration, cmd.host, details(cmd)["stdout_sha256"]) == (
        r.json()["id"], "h1", hashlib.sha256(b"hi\n").hexdigest())


def test_an_iteration_denied_by_policy_is_recorded_naming_the_rule(api):
    (api.data_dir / "policy.toml").write_text('[tenant.acme]\nimages = ["base"]\n')
    api.client.app.state.policies.reload()
    r = api.post("/v1/iterations", headers=api.key("acme", Scope.BATCH), json={
        "suite": "s", "image": "other", "command": ["true"]})
    assert r.status_code == 403
    assert [(x.action, x.outcome) for x in trace(api, r)][1] == ("policy.deny", "images")


def test_a_read_whose_request_cannot_be_recorded_answers_503(api, acme, box):
    api.audit.close()
    r = api.get(f"/v1/sandboxes/{box['id']}", headers=acme)
    assert (r.status_code, r.json()["type"]) == (503, "urn:tryfleet:problem:audit-unavailable")


# ---- keys outside the API --------------------------------------------------------------------
def test_a_key_is_recorded_before_it_exists_and_not_made_when_it_cannot_be(tmp_path):
    audit = Audit(tmp_path)
    keys = KeyStore(tmp_path / "ledger.db", tmp_path, audit=audit)
    audit.close()
    with pytest.raises(AuditUnavailable):
        keys.create("acme", frozenset({Scope.READ}), created_by="cli:me@here")
    assert keys.list() == []
    keys.close()


def test_the_local_admin_key_is_recorded_as_made_at_this_hosts_cli(tmp_path):
    audit = Audit(tmp_path)
    keys = KeyStore(tmp_path / "ledger.db", tmp_path, audit=audit)
    ensure_local_admin(keys, tmp_path)
    (made,) = audit.select(Filter(action="key.create"))
    keys.close()
    audit.close()
    assert (made.tenant, made.actor.startswith("cli:"), "@" in made.actor) == (
        "default", True, True)


# ---- the scheduler's records -----------------------------------------------------------------
def row(iid="i1", **kw):
    it = Iteration("base", ("sh", "-c", "echo hi"), env={"API_TOKEN": "s3cret"})
    return Row(id=iid, seq=1, tenant="acme", suite="s", trace_id="t" * 32, priority=0,
               iteration=it, limits=(), state="RUNNING", attempt=1, max_attempts=3,
               runs_left=1, host="h1", cancel_requested=False, request_id="req_1",
               key_id="k1", **kw)


def test_an_iterations_command_is_recorded_with_the_hosts_digests():
    r = row()
    o = Outcome(r.key, 1, State.SUCCEEDED, "h1", exit_code=0, stdout=b"hi\n",
                stdout_bytes=3, stdout_sha256="ab" * 32)
    (entry,) = audit_records.commands([o], {r.key: r}.get)
    got = json.loads(entry.details)
    assert (entry.action, entry.request_id, entry.iteration, entry.suite, entry.host) == (
        "iteration.command", "req_1", "i1", "s", "h1")
    assert (got["argv"], got["env_names"], got["stdout_sha256"]) == (
        ["sh", "-c", "echo hi"], ["API_TOKEN"], "ab" * 32)
    assert "s3cret" not in entry.details


def test_an_outcome_without_digests_is_digested_from_its_output():
    r = row()
    o = Outcome(r.key, 1, State.FAILED, "h1", exit_code=1, stderr=b"no\n")
    (entry,) = audit_records.commands([o], {r.key: r}.get)
    assert json.loads(entry.details)["stderr_sha256"] == hashlib.sha256(b"no\n").hexdigest()


def test_an_attempt_whose_command_never_ran_records_no_command():
    o = Outcome("acme/i1", 1, State.INFRA_ERROR, "h1", error="no VM")
    assert audit_records.commands([o], lambda key: None) == []


def test_a_sandbox_the_scheduler_closes_is_recorded_for_its_tenant_and_request():
    from tryfleet.scheduler.sandboxes import SandboxRecord

    rec = SandboxRecord("sbx-1", "acme", "base", 1, 512, None, "h1", "open", 0.0, 1.0,
                        "k1", "req_9")
    (entry,) = audit_records.of_actions([ev.CloseSandbox("sbx-1", "h1", "its timeout passed")],
                                        lambda key: None, {"sbx-1": rec}.get)
    assert (entry.action, entry.tenant, entry.actor, entry.request_id, entry.sandbox) == (
        "sandbox.close", "acme", "scheduler", "req_9", "sbx-1")


def test_iterations_whose_submission_cannot_be_recorded_are_not_submitted(tmp_path):
    from tryfleet.scheduler.engine import Engine

    audit = Audit(tmp_path)
    engine = Engine(str(tmp_path / "ledger.db"), audit=audit)
    audit.close()
    with pytest.raises(AuditUnavailable):
        engine.submit([Iteration("base", ("true",), id="i1")], "s", "acme")
    assert engine.ledger.get_row("i1", "acme") is None


def test_the_cores_actions_become_iteration_states_in_order():
    r = row()
    actions = [ev.Requeue(r.key, 1, "boom", 1, 0), ev.Finish(r.key, 2, State.SUCCEEDED),
               ev.Abandon(r.key, "gone")]
    got = [(e.action, e.outcome, e.tenant, e.iteration) for e in
           audit_records.of_actions(actions, {r.key: r}.get, lambda sid: None)]
    assert got == [("iteration.state", "requeued", "acme", "i1"),
                   ("iteration.state", "SUCCEEDED", "acme", "i1"),
                   ("iteration.state", "abandoned", "acme", "i1")]
