"""The fleet as a user runs it: `tryfleet up`, `tryfleet batch` of real-VM iterations, the
scheduler killed with SIGKILL mid-batch, the kill switch, a shared-resource limit, `tryfleet run`
through the fleet (a binary file in), `tryfleet ps` and `tryfleet logs` of a running iteration."""

import hashlib
import itertools
import json
import os
import signal
import subprocess

import pytest

from tests.waiting import until
from tryfleet.errors import CannotPlace
from tryfleet.local import free_port
from tryfleet.nodeagent.reaper import owner_alive
from tryfleet.scheduler.records import Iteration

from .conftest import TRYFLEET, cli, domains_of, own_data_dir

PORT = "6391"  # not the default 6390: a fleet other people use may be up there
# nor the API's default 8470; limit sizes are an admin's: `up` sets ci-db (a batch's `--limit`
# sets it again only with an admin key, as the local CLI has)
UP = ("up", "--port", PORT, "--api-listen", f"127.0.0.1:{free_port()}", "--limit", "ci-db=1")
vm = pytest.mark.vm


def live_owners(run_dir):
    """The node-agent owners registered under run_dir whose process is alive."""
    return {p.name for p in run_dir.iterdir() if p.is_dir() and owner_alive(run_dir, p.name)}


@pytest.fixture(scope="module")
def fleet(data_dir):
    """A fleet of this module's own: its Ray port and API port, and a data dir of its own
    (conftest.own_data_dir). The SDK and the CLI find it by its up.json and admin key there."""
    with own_data_dir(data_dir) as own:
        saved = {k: os.environ.get(k) for k in ("TRYFLEET_DATA", "TRYFLEET_LEDGER")}
        os.environ.update(TRYFLEET_DATA=str(own), TRYFLEET_LEDGER=str(own / "ledger.db"))
        others = live_owners(data_dir / "run")
        r = cli(*UP)
        assert r.returncode == 0, r.stderr
        import tryfleet

        f = tryfleet.connect()
        # this fleet's node agent: the owner that registered during `up` (run/ is shared)
        f.node_owners = live_owners(data_dir / "run") - others
        yield f
        f.close()
        cli("down")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def write_specs(path, specs):
    path.write_text("".join(json.dumps(s) + "\n" for s in specs))
    return path


def batch(specs_path, suite, *extra, wait=True):
    args = [TRYFLEET, "batch", str(specs_path), "--suite", suite, *extra]
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return cli(*args[1:], timeout=900)


def wait_running(fleet, suite, timeout=120):
    """Until one iteration of suite runs."""
    until(lambda: fleet.iterations(states=["RUNNING"], suite=suite), timeout,
          explain=lambda: fleet.counts(suite))


@vm
def test_mixed_batch_matches_direct_runs_and_respects_the_limit(fleet, tmp_path):
    specs = [
        {"image": "base", "command": ["python3", "-c", "print(6*7)"], "limits": ["ci-db"]},
        {"image": "base", "command": ["sh", "-c", "echo no >&2; exit 3"], "limits": ["ci-db"]},
        {"image": "base", "command": ["sleep", "60"], "timeout_s": 2, "limits": ["ci-db"]},
        {"image": "base", "command": ["cat", "/root/f.txt"], "files": {"/root/f.txt": "hi\n"},
         "limits": ["ci-db"]},
    ]
    out = tmp_path / "results.jsonl"
    r = batch(write_specs(tmp_path / "specs.jsonl", specs), "mixed", "--limit", "ci-db=1",
              "--out", str(out))
    assert r.returncode == 0, r.stderr
    got = {d["id"]: d for d in map(json.loads, out.read_text().splitlines())}
    assert [got[f"mixed-{n}"]["state"] for n in (1, 2, 3, 4)] == \
        ["SUCCEEDED", "FAILED", "TIMED_OUT", "SUCCEEDED"]
    assert (got["mixed-1"]["stdout"], got["mixed-2"]["exit_code"], got["mixed-2"]["stderr"],
            got["mixed-4"]["stdout"]) == ("42\n", 3, "no\n", "hi\n")
    spans = sorted((d["started_at"], d["ended_at"]) for d in got.values())
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans)), \
        "two iterations holding ci-db=1 overlapped"
    assert "SUCCEEDED" in r.stdout and "TOTAL" in r.stdout


def test_malformed_line_is_reported_with_its_number_and_nothing_is_submitted(fleet, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "base", "command": ["true"]}\n{"image": "base", "command": "x"}\n')
    r = batch(path, "bad")
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr
    assert fleet.counts("bad") == {}


@vm
def test_scheduler_killed_mid_batch_loses_nothing(fleet, tmp_path):
    specs = [{"image": "base", "command": ["sh", "-c", f"sleep 2; echo {i}"]} for i in range(6)]
    proc = batch(write_specs(tmp_path / "k.jsonl", specs), "killed", "--out",
                 str(tmp_path / "k.out"), wait=False)
    wait_running(fleet, "killed")
    os.kill(fleet.status()["pid"], signal.SIGKILL)
    assert cli(*UP).returncode == 0
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    results = [json.loads(line) for line in (tmp_path / "k.out").read_text().splitlines()]
    assert sorted(r["id"] for r in results) == sorted(f"killed-{i}" for i in range(1, 7))
    assert all(r["state"] == "SUCCEEDED" for r in results)
    assert sorted(r["stdout"] for r in results) == sorted(f"{i}\n" for i in range(6))


@vm
def test_kill_switch_stops_everything_within_two_seconds(fleet, tmp_path):
    specs = [{"image": "base", "command": ["sleep", "120"]} for _ in range(6)]
    proc = batch(write_specs(tmp_path / "c.jsonl", specs), "switch", wait=False)
    wait_running(fleet, "switch")
    assert len(fleet.node_owners) == 1 and domains_of(fleet.node_owners)
    fleet.cancel(all=True)
    until(lambda: domains_of(fleet.node_owners) == [], timeout_s=2,
          explain=lambda: domains_of(fleet.node_owners))
    proc.communicate(timeout=120)
    counts = fleet.counts("switch")
    assert counts == {"CANCELLED": 6}


@vm
def test_run_through_the_fleet_puts_a_binary_file_byte_for_byte(fleet, tmp_path):
    data = bytes(range(256)) * 64 + b"\xff\xfe not utf-8 \x00"
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    before = fleet.counts("put").get("SUCCEEDED", 0)
    r = cli("run", "--suite", "put", "--image", "base", "--put", f"{src}:/root/blob", "--",
            "sha256sum", "/root/blob")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert fleet.counts("put").get("SUCCEEDED", 0) == before + 1  # it went through the fleet


@vm
def test_ps_and_logs_of_a_running_iteration_then_of_the_ended_one(fleet):
    (iid,) = fleet.submit([Iteration("base", ("sh", "-c", "echo started; sleep 120"),
                                     id="logs-live")], suite="logs")
    until(lambda: fleet.output(iid).stdout, 120, explain=lambda: fleet.get(iid))
    ps = cli("ps")
    assert ps.returncode == 0, ps.stderr
    (row,) = [line.split() for line in ps.stdout.splitlines() if line.startswith(iid)]
    assert row[1:4] == ["logs", "default", "RUNNING"]
    logs = cli("logs", iid)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "started\n" and f"{iid}: RUNNING" in logs.stderr
    fleet.cancel(iid)
    assert fleet.wait([iid], timeout_s=60)[0].state == "CANCELLED"
    logs = cli("logs", iid)
    assert logs.returncode == 0 and f"{iid}: CANCELLED" in logs.stderr
    assert iid in cli("ps", "--all").stdout and iid not in cli("ps").stdout
    assert cli("logs", "no-such-id").returncode == 2


def test_what_no_host_can_run_is_refused_at_submit_as_a_bad_request(fleet):
    with pytest.raises(CannotPlace, match="can never run") as err:
        fleet.submit([Iteration("base", ("true",), cpus=16)], suite="huge")
    assert "cpu" in err.value.reason
    # the most memory a tenant's default policy allows (64 GiB), more than this host has
    r = cli("run", "--image", "base", "--mem-mib", str(1 << 16), "--", "true")
    assert r.returncode == 2 and "can never run" in r.stderr
