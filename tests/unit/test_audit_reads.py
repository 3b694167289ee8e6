"""Reading the audit trail: filters, one request's trace in order, export since a time; the
same through the API (an admin sees all, a tenant key only its own tenant's) and the CLI."""

import json
import time

import pytest
from fastapi.testclient import TestClient

from tryfleet.audit import Audit, Filter, parse_since
from tryfleet.cli import main as cli
from tryfleet.errors import BadRequest
from tryfleet.gateway.app import create_app
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.gateway.policy import Policies

# (action, tenant, request id, sandbox): two requests of acme interleaved with one of bolt's
RECORDS = [
    ("api.request", "acme", "req_a1", ""),
    ("api.request", "bolt", "req_b1", ""),
    ("sandbox.open", "acme", "req_a1", "sbx-1"),
    ("exec.start", "bolt", "req_b1", "sbx-9"),
    ("exec.start", "acme", "req_a2", "sbx-1"),
    ("exec.end", "acme", "req_a2", "sbx-1"),
    ("api.response", "acme", "req_a1", ""),
]


@pytest.fixture
def trail(tmp_path):
    audit = Audit(tmp_path)
    for action, tenant, rid, sandbox in RECORDS:
        audit.record(action, tenant=tenant, actor=f"key:{tenant}", request_id=rid,
                     sandbox=sandbox, details={"route": "/v1/x"})
    yield audit
    audit.close()


def seqs(records):
    return [r.seq for r in records]


# ---- the reads -------------------------------------------------------------------------------
def test_filters_match_every_field_given(trail):
    assert seqs(trail.select(Filter(tenant="acme"))) == [1, 3, 5, 6, 7]
    assert seqs(trail.select(Filter(tenant="acme", sandbox="sbx-1"))) == [3, 5, 6]
    assert seqs(trail.select(Filter(action="exec.start"))) == [4, 5]
    assert seqs(trail.select(Filter(action="exec.*"))) == [4, 5, 6]
    assert seqs(trail.select(Filter(action="exec"))) == [4, 5, 6]  # no action is bare
    assert seqs(trail.select(Filter(action="api.*", tenant="bolt"))) == [2]


def test_a_cursor_and_a_limit_page_through_oldest_first(trail):
    assert seqs(trail.select(Filter(limit=3))) == [1, 2, 3]
    assert seqs(trail.select(Filter(after_seq=3, limit=3))) == [4, 5, 6]


def test_newest_gives_the_last_ones_oldest_first(trail):
    assert seqs(trail.select(Filter(limit=2, newest=True))) == [6, 7]


def test_a_trace_is_one_requests_records_in_order(trail):
    got = trail.trace("req_a1")
    assert [(r.seq, r.action) for r in got] == [
        (1, "api.request"), (3, "sandbox.open"), (7, "api.response")]
    assert trail.trace("req_a1", tenant="bolt") == []


def test_since_keeps_records_at_or_after_a_time(trail, tmp_path):
    later = Audit(tmp_path)
    cut = time.time()
    try:
        later.record("key.create", tenant="acme", actor="cli:root@h", request_id="")
    finally:
        later.close()
    assert [r.action for r in trail.export(since=cut)] == ["key.create"]
    assert seqs(trail.select(Filter(since=cut))) == [8]
    assert len(list(trail.export())) == 8


def test_export_reads_page_by_page(trail):
    from tryfleet.audit import export

    assert seqs(export(trail.paths.db, page=2)) == list(range(1, 8))
    assert seqs(export(trail.paths.db, tenant="bolt", page=1)) == [2, 4]


def test_since_as_people_write_it():
    now = 1_000_000.0
    assert parse_since("15m", now) == now - 900
    assert parse_since("2h", now) == now - 7200
    assert parse_since("1700000000") == 1_700_000_000
    assert parse_since("2026-01-01T00:00:00Z") == 1_767_225_600
    with pytest.raises(BadRequest, match="since 'yesterday'"):
        parse_since("yesterday")


# ---- the API ---------------------------------------------------------------------------------
class Api:
    def __init__(self, client, keys):
        self.client, self.keys = client, keys

    def key(self, tenant, *scopes):
        _, token = self.keys.create(tenant, frozenset(scopes), created_by="test")
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(tmp_path, trail):
    ledger = tmp_path / "ledger.db"
    keys = KeyStore(ledger, tmp_path)
    app = create_app(None, keys, Policies(tmp_path), ledger)
    app.state.audit = trail
    with TestClient(app) as client:
        yield Api(client, keys)
    keys.close()


def items(resp):
    assert resp.status_code == 200, resp.text
    return [(r["seq"], r["tenant"]) for r in resp.json()["items"]]


def test_an_admin_sees_every_tenants_records(api):
    admin = api.key("ops", Scope.ADMIN)
    assert [s for s, _ in items(api.client.get("/v1/audit", headers=admin))] == list(
        range(1, 8))
    got = items(api.client.get("/v1/audit?tenant=bolt", headers=admin))
    assert got == [(2, "bolt"), (4, "bolt")]


def test_a_tenant_key_sees_only_its_own_tenants_records(api):
    acme = api.key("acme", Scope.READ)
    assert {t for _, t in items(api.client.get("/v1/audit", headers=acme))} == {"acme"}
    assert items(api.client.get("/v1/audit?request_id=req_b1", headers=acme)) == []
    resp = api.client.get("/v1/audit?tenant=bolt", headers=acme)
    assert resp.status_code == 403
    assert resp.headers["content-type"] == "application/problem+json"


def test_the_api_filters_and_pages_with_a_cursor(api):
    acme = api.key("acme", Scope.SANDBOX)
    first = api.client.get("/v1/audit?sandbox=sbx-1&limit=2", headers=acme).json()
    assert [r["seq"] for r in first["items"]] == [3, 5] and first["next_cursor"] == "5"
    rest = api.client.get(f"/v1/audit?sandbox=sbx-1&limit=2&cursor={first['next_cursor']}",
                          headers=acme).json()
    assert [r["seq"] for r in rest["items"]] == [6] and rest["next_cursor"] is None
    got = api.client.get("/v1/audit?action=exec.*", headers=acme).json()
    assert [(r["action"], r["details"]) for r in got["items"]] == [
        ("exec.start", {"route": "/v1/x"}), ("exec.end", {"route": "/v1/x"})]


def test_a_bad_since_is_a_400_that_says_what_is_expected(api):
    resp = api.client.get("/v1/audit?since=yesterday", headers=api.key("acme", Scope.READ))
    assert resp.status_code == 400 and "15m, 2h, 7d" in resp.json()["detail"]


def test_a_trace_through_the_api_and_another_tenants_request_not_found(api):
    acme = api.key("acme", Scope.READ)
    resp = api.client.get("/v1/audit/trace/req_a1", headers=acme)
    assert [r["action"] for r in resp.json()["items"]] == [
        "api.request", "sandbox.open", "api.response"]
    assert api.client.get("/v1/audit/trace/req_b1", headers=acme).status_code == 404
    assert api.client.get("/v1/audit/trace/nobody", headers=acme).status_code == 404
    admin = api.key("ops", Scope.ADMIN)
    assert api.client.get("/v1/audit/trace/req_b1", headers=admin).status_code == 200


def test_verify_through_the_api_is_for_admins(api):
    assert api.client.get("/v1/audit/verify",
                          headers=api.key("acme", Scope.READ)).status_code == 403
    got = api.client.get("/v1/audit/verify", headers=api.key("ops", Scope.ADMIN)).json()
    # the 7, and the 403's api.request and api.response (a call's own api.request is written
    # as its answer starts: after it read)
    assert got["ok"] is True and got["records"] == 9 and got["problems"] == []


def test_export_streams_json_lines_of_the_callers_tenant(api):
    resp = api.client.get("/v1/audit/export", headers=api.key("bolt", Scope.READ))
    assert resp.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in resp.text.splitlines()]
    # bolt's two, and this call's own api.request (8: written as its answer started, before
    # the lines were read)
    assert [(r["seq"], r["tenant"]) for r in lines] == [(2, "bolt"), (4, "bolt"), (8, "bolt")]
    assert set(lines[0]) >= {"prev_hash", "hash", "details", "actor", "at"}
    resp = api.client.get("/v1/audit/export?since=0", headers=api.key("ops", Scope.ADMIN))
    # the 7, bolt's export's request and response, and this one's request
    assert len(resp.text.splitlines()) == 10


def test_without_an_audit_trail_the_api_answers_503(api):
    api.client.app.state.audit = None
    resp = api.client.get("/v1/audit", headers=api.key("ops", Scope.ADMIN))
    assert resp.status_code == 503 and "audit unavailable" in resp.json()["detail"]


# ---- the CLI ---------------------------------------------------------------------------------
def test_cli_ls_filters_and_prints_a_table_or_json(trail, tmp_path, capsys):
    assert cli(["--data-dir", str(tmp_path), "audit", "ls", "--tenant", "bolt"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["SEQ", "TIME", "(UTC)"] and len(out) == 3
    assert out[1].split()[0] == "2" and "api.request" in out[1]
    assert cli(["--data-dir", str(tmp_path), "audit", "ls", "--action", "exec.*",
                "--json"]) == 0
    assert [r["seq"] for r in json.loads(capsys.readouterr().out)] == [4, 5, 6]


def test_cli_trace_prints_each_record_with_its_details(trail, tmp_path, capsys):
    assert cli(["--data-dir", str(tmp_path), "audit", "trace", "req_a2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# request req_a2: 2 records")
    assert "exec.start" in out[1] and out[2].strip() == '{"route":"/v1/x"}'
    assert cli(["--data-dir", str(tmp_path), "audit", "trace", "req_none"]) == 2


def test_cli_export_writes_json_lines_since_a_time(trail, tmp_path, capsys):
    assert cli(["--data-dir", str(tmp_path), "audit", "export", "--since", "1h"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(1, 8))
