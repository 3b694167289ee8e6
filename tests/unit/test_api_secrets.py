"""Policy denials, secrets and their masking through the real gateway over HTTP (servedapi.py:
the real scheduler and ledger, a node agent on the fake hypervisor, an audit trail), through
the SDK and the CLI as a user would."""

import io
import json
import sqlite3

import httpx
import pytest

import tryfleet
from tryfleet.audit import Filter
from tryfleet.cli import main
from tryfleet.errors import PolicyDenied
from tryfleet.scheduler.records import Iteration

from .servedapi import served_api

VALUE = "hunter2-s3cret"  # what the tests' secret holds
POLICY = '[default]\nsecrets = ["CI_*"]\n\n[tenant.tiny]\nimages = ["base"]\nmax_cpus = 1\n' \
         'interactive = true\n\n[tenant.batchonly]\ninteractive = false\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with served_api(tmp_path_factory.mktemp("secrets"), audit=True) as s:
        (s.data_dir / "policy.toml").write_text(POLICY)
        yield s


@pytest.fixture(scope="module")
def admin(served):
    fleet = tryfleet.connect(served.url, served.admin)
    fleet.secrets.set("acme", "CI_TOKEN", VALUE)
    fleet.secrets.set("acme", "OTHER_TOKEN", "other-value")
    return fleet


def http(served, key):
    return httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {key}"},
                        timeout=60)


def denials(served, request_id):
    from tryfleet.audit import Audit

    trail = Audit(served.data_dir)
    try:
        return [r for r in trail.select(Filter(request_id=request_id))
                if r.action == "policy.deny"]
    finally:
        trail.close()


# ---- policy ----------------------------------------------------------------------------------
def test_two_cpus_for_a_one_cpu_tenant_is_a_403_naming_the_rule(served):
    with http(served, served.key("tiny")) as c:
        r = c.post("/v1/sandboxes", json={"image": "base", "cpus": 2})
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["rule"] == "max_cpus" and "cpus 2" in r.json()["detail"]


def test_a_denial_is_audited_with_its_rule(served):
    with http(served, served.key("tiny")) as c:
        r = c.post("/v1/sandboxes", json={"image": "base", "cpus": 2})
    (record,) = denials(served, r.headers["x-request-id"])
    assert record.tenant == "tiny" and json.loads(record.details)["rule"] == "max_cpus"
    assert record.actor.startswith("key:")


def test_a_tenant_without_interactive_opens_no_sandbox(served):
    with http(served, served.key("batchonly")) as c:
        r = c.post("/v1/sandboxes", json={})
    assert r.status_code == 403 and r.json()["rule"] == "interactive"


# ---- secrets: the admin's routes -------------------------------------------------------------
def test_a_listing_gives_names_never_values(served, admin):
    with http(served, served.admin) as c:
        r = c.get("/v1/secrets", params={"tenant": "acme"})
    assert [s["name"] for s in r.json()["items"]] == ["CI_TOKEN", "OTHER_TOKEN"]
    assert VALUE not in r.text


def test_secrets_are_for_admins(served):
    with http(served, served.key("acme")) as c:
        r = c.put("/v1/secrets/acme/CI_X", json={"value": "long-enough"})
    assert r.status_code == 403


def test_the_value_is_in_neither_the_ledger_nor_the_audit_trail(served, admin):
    for name in ("ledger.db", "audit.db"):
        db = sqlite3.connect(served.data_dir / name)
        try:
            dump = "\n".join(db.iterdump())
        finally:
            db.close()
        assert VALUE not in dump, name


# ---- secrets exposed to commands, masked in what comes back ----------------------------------
@pytest.fixture(scope="module")
def box(served, admin):
    with http(served, served.key("acme")) as c:
        r = c.post("/v1/sandboxes", json={"timeout_s": 300})
        assert r.status_code == 201, r.text
        return r.json()["id"]


def test_a_command_sees_the_secret_and_prints_it_masked(served, box):
    with http(served, served.key("acme")) as c:
        r = c.post(f"/v1/sandboxes/{box}/exec", json={
            "argv": ["sh", "-c", 'echo "token=$CI_TOKEN"'], "secrets": ["CI_TOKEN"]})
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "token=" + "*" * len(VALUE) + "\n"


def test_a_file_holding_the_secret_is_read_back_masked(served, box):
    with http(served, served.key("acme")) as c:
        url = f"/v1/sandboxes/{box}/files"
        c.put(url, params={"path": "/root/leak.txt"}, content=b"k=" + VALUE.encode() + b"\n")
        got = c.get(url, params={"path": "/root/leak.txt"})
    assert got.content == b"k=" + b"*" * len(VALUE) + b"\n"


def test_a_streamed_command_prints_the_secret_masked_also_split_across_writes(served, box):
    script = 'printf %s "$CI_TOKEN" | head -c 7; sleep 0.2; printf %s "$CI_TOKEN" | tail -c +8'
    with http(served, served.key("acme")) as c:
        r = c.post(f"/v1/sandboxes/{box}/exec/stream", json={
            "argv": ["sh", "-c", script], "secrets": ["CI_TOKEN"]})
    printed = "".join(json.loads(line[6:])["data"] for line in r.text.splitlines()
                      if line.startswith('data: {"data":'))
    assert VALUE not in r.text and printed == "*" * len(VALUE)


def test_a_secret_the_policy_does_not_allow_is_a_403_naming_secrets(served, box):
    with http(served, served.key("acme")) as c:
        r = c.post(f"/v1/sandboxes/{box}/exec", json={"argv": ["true"],
                                                      "secrets": ["OTHER_TOKEN"]})
    assert r.status_code == 403 and r.json()["rule"] == "secrets"


def test_a_stream_naming_a_secret_the_policy_does_not_allow_is_a_403_not_a_stream(served,
                                                                                   box):
    with http(served, served.key("acme")) as c:
        r = c.post(f"/v1/sandboxes/{box}/exec/stream", json={"argv": ["true"],
                                                             "secrets": ["OTHER_TOKEN"]})
    assert r.status_code == 403 and r.json()["rule"] == "secrets"


def test_a_secret_the_tenant_does_not_hold_is_a_404_naming_it(served, box):
    with http(served, served.key("acme")) as c:
        r = c.post(f"/v1/sandboxes/{box}/exec", json={"argv": ["true"],
                                                      "secrets": ["CI_NOSUCH"]})
    assert r.status_code == 404 and "CI_NOSUCH" in r.json()["detail"]


def test_an_iterations_output_is_masked_in_the_api_and_in_the_ledger(served, admin):
    fleet = tryfleet.connect(served.url, served.key("acme"))
    got = fleet.run(Iteration(image="base", command=("sh", "-c", 'echo "[$CI_TOKEN]"'),
                              secrets=("CI_TOKEN",), id="prints-it"))
    assert got.stdout == "[" + "*" * len(VALUE) + "]\n"
    db = sqlite3.connect(served.data_dir / "ledger.db")
    try:
        stored = b"".join(bytes(row[0] or b"") + bytes(row[1] or b"") for row in db.execute(
            "SELECT stdout, spec FROM iterations"))
    finally:
        db.close()
    assert VALUE.encode() not in stored and b"CI_TOKEN" in stored


def test_an_iteration_naming_a_secret_the_policy_does_not_allow_is_refused(served, admin):
    fleet = tryfleet.connect(served.url, served.key("acme"))
    with pytest.raises(PolicyDenied, match="OTHER_TOKEN"):
        fleet.submit([Iteration(image="base", command=("true",), secrets=("OTHER_TOKEN",))])


# ---- the CLI ---------------------------------------------------------------------------------
def test_secret_set_reads_the_value_from_stdin_and_logs_show_it_masked(served, admin, monkeypatch,
                                                                      capsys):
    flags = ["--url", served.url, "--api-key", served.admin]
    monkeypatch.setattr("sys.stdin", io.StringIO("from-stdin-42\n"))
    assert main(["secret", "set", "--tenant", "acme", "CI_CLI", *flags]) == 0
    fleet = tryfleet.connect(served.url, served.key("acme"))
    fleet.run(Iteration(image="base", command=("sh", "-c", "echo $CI_CLI"),
                        secrets=("CI_CLI",), id="cli-logs"))
    capsys.readouterr()
    assert main(["logs", "cli-logs", *flags]) == 0
    out = capsys.readouterr().out
    assert "from-stdin-42" not in out and "*" * len("from-stdin-42") in out


def test_secret_ls_lists_names_and_rm_removes(served, admin, capsys):
    flags = ["--url", served.url, "--api-key", served.admin]
    admin.secrets.set("acme", "CI_GONE", "soon-gone")
    assert main(["secret", "rm", "--tenant", "acme", "CI_GONE", *flags]) == 0
    capsys.readouterr()
    assert main(["secret", "ls", "--tenant", "acme", *flags]) == 0
    out = capsys.readouterr().out
    assert "CI_TOKEN" in out and "CI_GONE" not in out and VALUE not in out


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_secret_set_refuses_to_read_a_value_typed_at_a_terminal(served, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", Terminal("typed\n"))
    code = main(["secret", "set", "--tenant", "acme", "CI_TYPED", "--url", served.url,
                 "--api-key", served.admin])
    assert code != 0 and "pipe it in" in capsys.readouterr().err
