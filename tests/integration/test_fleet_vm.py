"""The fleet as a user runs it: `tryfleet up`, `tryfleet batch` of real-VM iterations, the
scheduler killed with SIGKILL mid-batch, the kill switch, and a shared-resource limit."""

import json
import os
import signal
import subprocess
import time

import pytest

from .conftest import TRYFLEET, cli, tryfleet_domains


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, data_dir):
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.db"
    os.environ["TRYFLEET_LEDGER"] = str(ledger)
    cli("down")
    r = cli("up")
    assert r.returncode == 0, r.stderr
    import tryfleet

    f = tryfleet.connect()
    yield f
    f.close()
    cli("down")
    os.environ.pop("TRYFLEET_LEDGER", None)


def write_specs(path, specs):
    path.write_text("".join(json.dumps(s) + "\n" for s in specs))
    return path


def batch(specs_path, suite, *extra, wait=True):
    args = [TRYFLEET, "batch", str(specs_path), "--suite", suite, *extra]
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return cli(*args[1:], timeout=900)


def wait_running(fleet, suite, n=1, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [r for r in fleet._call("ps") if r["suite"] == suite and r["state"] == "RUNNING"]
        if len(rows) >= n:
            return rows
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} iterations of {suite} started")


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
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), \
        "two iterations holding ci-db=1 overlapped"
    assert "SUCCEEDED" in r.stdout and "TOTAL" in r.stdout


def test_malformed_line_is_reported_with_its_number_and_nothing_is_submitted(fleet, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "base", "command": ["true"]}\n{"image": "base", "command": "x"}\n')
    r = batch(path, "bad")
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr
    assert fleet._call("counts", "bad") == {}


def test_scheduler_killed_mid_batch_loses_nothing(fleet, tmp_path):
    specs = [{"image": "base", "command": ["sh", "-c", f"sleep 2; echo {i}"]} for i in range(6)]
    proc = batch(write_specs(tmp_path / "k.jsonl", specs), "killed", "--out",
                 str(tmp_path / "k.out"), wait=False)
    wait_running(fleet, "killed")
    os.kill(fleet.status()["pid"], signal.SIGKILL)
    assert cli("up").returncode == 0
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    results = [json.loads(line) for line in (tmp_path / "k.out").read_text().splitlines()]
    assert sorted(r["id"] for r in results) == sorted(f"killed-{i}" for i in range(1, 7))
    assert all(r["state"] == "SUCCEEDED" for r in results)
    assert sorted(r["stdout"] for r in results) == sorted(f"{i}\n" for i in range(6))


def test_kill_switch_stops_everything_within_two_seconds(fleet, tmp_path):
    specs = [{"image": "base", "command": ["sleep", "120"]} for _ in range(6)]
    proc = batch(write_specs(tmp_path / "c.jsonl", specs), "switch", wait=False)
    wait_running(fleet, "switch")
    fleet.cancel(all=True)
    time.sleep(2)
    assert tryfleet_domains() == []
    proc.communicate(timeout=120)
    counts = fleet._call("counts", "switch")
    assert counts == {"CANCELLED": 6}
