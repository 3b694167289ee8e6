"""The SDK and the CLI against the real gateway app over real HTTP on loopback (servedapi.py:
the real scheduler and ledger, a node agent on the fake hypervisor; no Ray, no VM): what the
client reads of each answer is what the server gives. fakeapi.py, the client's reading of the
contract, is checked against the same answers in tests/unit/test_sdk_http.py."""

import json
import uuid

import httpx
import pytest

import tryfleet
from tests.waiting import until
from tryfleet.cli import main
from tryfleet.errors import AccessDenied, BadRequest, NotFound
from tryfleet.scheduler.records import Iteration

from .servedapi import served_api


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRYFLEET_ACCEL", "tcg")
        with served_api(tmp_path_factory.mktemp("served"), limits={"ci-db": 2}) as s:
            yield s


@pytest.fixture(scope="module")
def admin(served):
    with tryfleet.connect(served.url, api_key=served.admin) as f:
        yield f


@pytest.fixture(scope="module")
def acme(served):
    with tryfleet.connect(served.url, api_key=served.key("acme")) as f:
        yield f


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def held(tmp_path, iid, before="", after=""):
    """An iteration that prints `before`, then waits for the test to create its go-file (the
    fake hypervisor runs commands on this machine), then prints `after`; and that file."""
    go = tmp_path / f"go-{iid}"
    script = f"printf '{before}'; while [ ! -e {go} ]; do sleep 0.02; done; printf '{after}'"
    return Iteration("base", ("sh", "-c", script), id=iid), go


def cli(served, *argv, key=None):
    n = 2 if argv[0] == "key" else 1
    return main([*argv[:n], "--url", served.url, "--api-key", key or served.admin, *argv[n:]])


# ---- iterations ------------------------------------------------------------------------------

def test_results_carry_attempts_request_and_key_ids_as_the_server_recorded_them(acme):
    suite = unique("rid")
    (iid,) = acme.submit([Iteration("base", ("sh", "-c", "echo hi"), id="r1")], suite=suite)
    submitted_by = acme.last_request_id
    (waited,) = acme.wait([iid], timeout_s=60, suite=suite)
    (listed,) = acme.iterations(suite=suite)
    detail = acme.get(iid)
    assert waited.request_id == listed.request_id == detail.result.request_id == submitted_by
    assert waited.key_id == acme.me()["key_id"]
    assert (waited.attempts, listed.attempts, detail.result.attempts) == (1, 1, 1)
    assert waited.stdout == "hi\n" and listed.stdout == ""
    assert [(a.attempt, a.host, a.outcome) for a in detail.attempts] == [(1, "", "SUCCEEDED")]
    events = acme.events(suite=suite)
    _, ended = next(events)
    events.close()
    assert (ended.id, ended.attempts, ended.end_seq) == (iid, 1, waited.end_seq)


def test_following_from_an_offset_mid_run_gives_each_byte_once(served, acme, tmp_path):
    it, go = held(tmp_path, "fo1", before="abc", after="def")
    acme.submit([it], suite=unique("follow"))
    until(lambda: acme.output("fo1").stdout == b"abc", 30)
    headers = {"Authorization": f"Bearer {served.key('acme')}"}
    params = {"follow": "true", "out_offset": 1}
    got = []
    with httpx.stream("GET", f"{served.url}/v1/iterations/fo1/output", params=params,
                      headers=headers, timeout=30) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if len(got) == 1:
                    go.touch()
    *chunks, ended = got
    assert (chunks[0]["offset"], chunks[0]["data"]) == (1, "bc")
    assert "".join(c["data"] for c in chunks) == "bcdef"
    assert ended["state"] == "SUCCEEDED"


def test_follow_yields_the_output_then_the_result(acme, tmp_path):
    it, go = held(tmp_path, "fo2", before="one\n", after="two\n")
    acme.submit([it], suite=unique("follow"))
    following = acme.follow("fo2")
    assert next(following) == ("stdout", b"one\n")
    go.touch()
    *rest, result = following
    assert rest == [("stdout", b"two\n")] and result.state == "SUCCEEDED"


def test_an_admin_reads_and_waits_for_a_tenants_iteration_by_tenant(served, admin, acme):
    suite = unique("shared")
    with tryfleet.connect(served.url, api_key=served.key("bolt")) as bolt:
        for fleet in (acme, bolt):
            fleet.submit([Iteration("base", ("sh", "-c", "echo $0", fleet.me()["tenant"]),
                                    id="same")], suite=suite)
        with pytest.raises(BadRequest, match="several tenants"):
            admin.get("same")
        (got,) = admin.wait(["same"], timeout_s=60, suite=suite, tenant="bolt")
        assert (got.tenant, got.stdout, got.host) == ("bolt", "bolt\n", "h1")
        assert admin.get("same", tenant="acme").result.stdout == "acme\n"
        with pytest.raises(NotFound):
            bolt.get("r1")  # acme's
        assert bolt.counts(suite) == {"SUCCEEDED": 1} and bolt.counts("no-such-suite") == {}


def test_the_kill_switch_for_one_tenant_then_for_everything(served, admin, acme, tmp_path):
    suite = unique("kill")
    with tryfleet.connect(served.url, api_key=served.key("bolt")) as bolt:
        acme.submit([held(tmp_path, f"k{i}")[0] for i in range(2)], suite=suite)
        bolt.submit([held(tmp_path, f"k{i}")[0] for i in range(2)], suite=suite)
        with pytest.raises(AccessDenied, match="admin"):
            acme.cancel(all=True)
        got = admin.cancel(tenant="acme")
        assert sum(got.values()) == 2
        assert {r.state for r in acme.wait(["k0", "k1"], timeout_s=30, suite=suite)} == {
            "CANCELLED"}
        assert {r.state for r in bolt.iterations(suite=suite)} <= {"QUEUED", "PLACED",
                                                                    "RUNNING"}
        assert sum(admin.cancel(all=True).values()) == 2
        assert {r.state for r in bolt.wait(["k0", "k1"], timeout_s=30, suite=suite)} == {
            "CANCELLED"}


# ---- the CLI ---------------------------------------------------------------------------------

def specs(tmp_path, n, **extra):
    path = tmp_path / "specs.jsonl"
    path.write_text("".join(json.dumps({"image": "base", "command": ["echo", str(i)], **extra})
                            + "\n" for i in range(n)))
    return path


def test_batch_limit_matches_the_size_in_force_unless_an_admin_sets_it(served, tmp_path,
                                                                       capsys):
    tenant_key, path = served.key("acme"), specs(tmp_path, 2, limits=["ci-db"])
    assert cli(served, "batch", str(path), "--suite", unique("lim"), "--limit", "ci-db=2",
               key=tenant_key) == 0
    capsys.readouterr()
    assert cli(served, "batch", str(path), "--suite", unique("lim"), "--limit", "ci-db=3",
               key=tenant_key) == 2
    err = capsys.readouterr().err
    assert "--limit ci-db=3" in err and "(ci-db=2)" in err and "not an admin's" in err
    assert cli(served, "batch", str(path), "--suite", unique("lim"), "--limit", "ci-db=3") == 0
    capsys.readouterr()
    assert cli(served, "status") == 0
    assert "ci-db=3 (0 in use)" in capsys.readouterr().out
    assert cli(served, "batch", str(path), "--suite", unique("lim"), "--limit", "ci-db=2") == 0


def test_status_ps_logs_and_cancel(served, acme, tmp_path, capsys):
    suite = unique("cmds")
    it, _ = held(tmp_path, "live1", before="started\n")
    acme.submit([it], suite=suite)
    until(lambda: acme.output("live1").stdout, 30)
    assert cli(served, "status") == 0
    out = capsys.readouterr().out
    assert "scheduler pid" in out and "h1" in out and "acme" in out and "RUNNING" in out
    assert cli(served, "ps") == 0
    (row,) = [line.split() for line in capsys.readouterr().out.splitlines()
              if line.startswith("live1")]
    assert row[1:6] == [suite, "acme", "RUNNING", "h1", "1"]
    assert cli(served, "logs", "live1") == 0
    captured = capsys.readouterr()
    assert captured.out == "started\n" and "attempt 1 on h1: running" in captured.err
    assert cli(served, "cancel", "--suite", suite, key=served.key("acme")) == 0
    assert "stopping 1 running" in capsys.readouterr().out
    assert acme.wait(["live1"], timeout_s=30)[0].state == "CANCELLED"
    assert cli(served, "cancel", "--tenant", "acme") == 0
    assert cli(served, "cancel", "--all", key=served.key("acme")) == 2


# ---- sandboxes -------------------------------------------------------------------------------

def test_a_sandbox_tells_an_admin_its_host_and_a_tenant_not(admin, acme):
    with admin.sandbox(timeout_s=60) as mine, acme.sandbox(timeout_s=60) as theirs:
        assert (mine.host, theirs.host) == ("h1", None)
        assert theirs.request_id and theirs.exec(["sh", "-c", "echo $((6*7))"]).stdout == \
            b"42\n"
