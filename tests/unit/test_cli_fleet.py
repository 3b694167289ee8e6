"""The fleet commands as a user types them, through the HTTP SDK, against an in-memory API
(tests/unit/fakeapi.py); what they print and exit with; and what the commands may use of the
SDK."""

import ast
import base64
import json
import pathlib
import signal

import pytest

import tryfleet.fleet
from tryfleet import local
from tryfleet.cli import main
from tryfleet.commands.batch import RESULT_FIELDS
from tryfleet.scheduler.records import Iteration

from .fakeapi import ACME, ADMIN, FakeApi

COMMANDS = pathlib.Path(tryfleet.fleet.__file__).parent / "commands"
URL = "http://fleet.test:8470"


@pytest.fixture
def sigterm_kept():
    """`tryfleet run` turns SIGTERM into KeyboardInterrupt: put the old handler back."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def by_command(spec):
    """What the fake fleet makes of a command: `exit N`, `sleep` times out, `boom` breaks."""
    argv = spec["command"]
    if argv[:2] == ["sh", "-c"] and argv[2].startswith("exit "):
        code = int(argv[2].split()[1])
        return {"state": "SUCCEEDED" if code == 0 else "FAILED", "exit_code": code,
                "stderr": b"no\n"}
    if argv[0] == "sleep":
        return {"state": "TIMED_OUT", "exit_code": None, "error": "timed out"}
    if argv[0] == "boom":
        return {"state": "INFRA_ERROR", "exit_code": None, "error": "the VM did not boot"}
    return {"state": "SUCCEEDED", "exit_code": 0, "stdout": b"ok\n"}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """The API the commands reach: --url and the keys below go to it, nothing to a network."""
    api = FakeApi(by_command)
    real = tryfleet.fleet.connect
    monkeypatch.setattr(tryfleet.fleet, "connect",
                        lambda *a, **kw: real(*a, **kw, transport=api.transport))
    for name in ("TRYFLEET_URL", "TRYFLEET_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRYFLEET_DATA", str(tmp_path / "data"))
    return api


def cli(*argv, key=ACME):
    """main(argv) with --url and --api-key after the command (and its action: key create)."""
    n = 2 if argv[0] == "key" else 1
    return main([*argv[:n], "--url", URL, "--api-key", key, *argv[n:]])


def submit(fake, *ids, suite="s", tenant="acme"):
    fleet = tryfleet.fleet.Fleet(URL, ACME, transport=fake.transport)
    return fleet.submit([Iteration("base", ("x",), id=i) for i in ids], suite=suite)


# ---- run ------------------------------------------------------------------------------------

def test_run_puts_a_binary_file_through_the_fleet_byte_for_byte(tmp_path, fake, capfdbinary,
                                                                 sigterm_kept):
    data = bytes(range(256)) + b"\xff\xfe not utf-8 \x00"
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    code = cli("run", "--image", "base", "--put", f"{src}:/root/blob", "--", "sha256sum",
               "/root/blob")
    out, err = capfdbinary.readouterr()
    assert code == 0, err
    assert out == b"ok\n"
    (sent,) = fake.sent("POST /v1/batches")
    (spec,) = json.loads(sent.content)["iterations"]
    assert base64.b64decode(spec["files"]["/root/blob"]["b64"]) == data
    assert json.loads(sent.content)["suite"] == "run"


@pytest.mark.parametrize("argv, code, said", [
    (["sh", "-c", "exit 3"], 3, b""),
    (["sleep", "60"], 124, b"timed out after 2s"),
    (["boom"], 125, b"the VM did not boot"),
])
def test_run_exits_as_its_command_did(fake, capfdbinary, sigterm_kept, argv, code, said):
    assert cli("run", "--image", "base", "--timeout-s", "2", "--", *argv) == code
    assert said in capfdbinary.readouterr().err


def test_run_of_what_no_host_can_run_is_a_usage_error(fake, capsys, sigterm_kept):
    assert cli("run", "--image", "base", "--cpus", "99", "--", "true") == 2
    assert "can never run" in capsys.readouterr().err


def test_run_local_beyond_the_hosts_memory_is_refused_before_any_vm(tmp_path, monkeypatch,
                                                                    capsys, sigterm_kept):
    from tryfleet.commands import run

    def no_vm(*args, **kw):
        raise AssertionError("a VM would have been started")

    monkeypatch.setattr(run, "open_node", no_vm)
    code = main(["--data-dir", str(tmp_path), "run", "--local", "--image", "base",
                 "--mem-mib", str(1 << 30), "--", "true"])
    err = capsys.readouterr().err
    assert code == 2
    assert "MiB of memory in all" in err and "at most" in err


# ---- ps, logs, status, cancel ------------------------------------------------------------------

def test_ps_lists_queued_and_running_and_all_with_all(fake, capsys):
    fake.auto_end = False
    submit(fake, "p0", "p1", suite="ps")
    submit(fake, "old", suite="done")
    fake.start("acme", "p0")
    fake.end("acme", "old", "CANCELLED", None, error="cancelled")
    assert cli("ps") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ID", "SUITE", "TENANT", "STATE"]
    assert sorted(line.split()[3] for line in lines[1:]) == ["QUEUED", "RUNNING"]
    assert cli("ps", "--all") == 0
    assert "CANCELLED" in capsys.readouterr().out


def test_logs_of_a_running_iteration_shows_its_output_so_far(fake, capfdbinary):
    fake.auto_end = False
    submit(fake, "live", suite="logs")
    fake.start("acme", "live", printed=b"first half")
    assert cli("logs", "live") == 0
    out, err = capfdbinary.readouterr()
    assert out == b"first half"
    assert b"live: RUNNING on h1" in err and b"attempt 1 on h1: running" in err


def test_logs_of_an_ended_iteration_and_of_an_unknown_one(fake, capfdbinary):
    fake.outcome = lambda spec: {"state": "SUCCEEDED", "exit_code": 0, "stdout": b"\xff all"}
    submit(fake, "ended", suite="logs")
    assert cli("logs", "ended") == 0
    out, err = capfdbinary.readouterr()
    assert out == b"\xff all" and b"ended: SUCCEEDED exit 0 on h1" in err
    assert cli("logs", "nosuch") == 2
    assert b"no iteration 'nosuch'" in capfdbinary.readouterr().err


def test_status_is_for_admins(fake, capsys):
    fake.limits["ci-db"] = 8
    submit(fake, "s0", suite="st")
    assert cli("status", key=ADMIN) == 0
    out = capsys.readouterr().out
    assert "scheduler pid 4242" in out and "h1" in out and "accel tcg" in out
    assert "ci-db=8 (0 in use)" in out and "acme" in out and "SUCCEEDED 1" in out
    assert cli("status") == 2
    assert "scope" in capsys.readouterr().err


def test_cancel_a_suite_and_the_kill_switch_only_for_admins(fake, capsys):
    fake.auto_end = False
    submit(fake, "c0", "c1", suite="cs")
    assert cli("cancel", "--suite", "cs") == 0
    assert "cancelled 2 queued" in capsys.readouterr().out
    assert cli("cancel", "--all") == 2
    assert cli("cancel", "--all", key=ADMIN) == 0
    assert json.loads(fake.sent("POST /v1/fleet/cancel")[-1].content) == {}
    assert cli("cancel") == 2


# ---- batch ------------------------------------------------------------------------------------

def write_specs(path, n, **extra):
    path.write_text("".join(json.dumps({"image": "base", "command": ["x", str(i)], **extra})
                            + "\n" for i in range(n)))
    return path


def test_batch_waits_on_the_event_stream_and_writes_every_result(tmp_path, fake, capsys):
    specs, out = write_specs(tmp_path / "specs.jsonl", 30), tmp_path / "results.jsonl"
    assert cli("batch", str(specs), "--suite", "b", "--out", str(out)) == 0, \
        capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"b-{i}" for i in range(1, 31))
    assert {r["state"] for r in rows} == {"SUCCEEDED"} and rows[0]["stdout"] == "ok\n"
    assert set(rows[0]) == set(RESULT_FIELDS)
    streams = fake.sent("GET /v1/events/iterations")
    assert streams and {r.url.params["suite"] for r in streams} == {"b"}
    assert "SUCCEEDED" in capsys.readouterr().out


def test_a_batch_run_again_submits_nothing_twice_and_picks_up_the_results(tmp_path, fake,
                                                                         capsys):
    specs, out = write_specs(tmp_path / "specs.jsonl", 3), tmp_path / "again.jsonl"
    assert cli("batch", str(specs), "--suite", "b") == 0
    assert cli("batch", str(specs), "--suite", "b", "--out", str(out)) == 0
    assert len(fake.its) == 3 and len(out.read_text().splitlines()) == 3


def test_batch_limit_sizes_are_for_admins_and_iterations_name_their_limits(tmp_path, fake,
                                                                          capsys):
    specs = write_specs(tmp_path / "specs.jsonl", 2, limits=["ci-db"])
    assert cli("batch", str(specs), "--suite", "l", "--limit", "ci-db=2") == 2
    err = capsys.readouterr().err
    assert "--limit ci-db=2" in err and "set by admins" in err and "size in force" in err
    assert not fake.its and not fake.limits
    assert cli("batch", str(specs), "--suite", "l", "--limit", "ci-db=2", key=ADMIN) == 0
    assert fake.limits == {"ci-db": 2}
    sent = json.loads(fake.sent("POST /v1/batches")[-1].content)
    assert [it["limits"] for it in sent["iterations"]] == [["ci-db"], ["ci-db"]]
    # a tenant's key may name the size in force (as the demo's `batch --limit` does)
    assert cli("batch", str(specs), "--suite", "l2", "--limit", "ci-db=2") == 0
    assert len(fake.sent("PUT /v1/fleet/limits")) == 1


def test_batch_for_a_tenant_writes_and_logs_show_its_own_ids(tmp_path, fake, capsys):
    specs, out = write_specs(tmp_path / "specs.jsonl", 3), tmp_path / "results.jsonl"
    assert cli("batch", str(specs), "--suite", "b", "--tenant", "acme", "--out", str(out),
               key=ADMIN) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["id"], r["tenant"]) for r in rows) == [("b-1", "acme"), ("b-2", "acme"),
                                                            ("b-3", "acme")]
    assert json.loads(fake.sent("POST /v1/batches")[0].content)["tenant"] == "acme"
    assert cli("batch", str(specs), "--suite", "b", "--tenant", "bolt") == 2  # not an admin
    assert cli("logs", "b-2", key=ADMIN) == 0
    assert "b-2: SUCCEEDED" in capsys.readouterr().err


def test_a_malformed_line_submits_nothing(tmp_path, fake, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "base", "command": ["true"]}\n{"image": "base", "command": "x"}\n')
    assert cli("batch", str(path), "--suite", "bad") == 2
    assert "bad.jsonl:2" in capsys.readouterr().err and fake.requests == []


# ---- keys -------------------------------------------------------------------------------------

def test_key_create_prints_the_key_alone_on_stdout_then_ls_and_revoke(fake, capsys):
    assert cli("key", "create", "--tenant", "acme", "--scope", "read", "--expires", "30d",
               "--name", "ci", key=ADMIN) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("tf_") and "\n" not in token
    body = json.loads(fake.sent("POST /v1/keys")[0].content)
    assert body == {"tenant": "acme", "scopes": ["read"], "name": "ci",
                    "expires_in_s": 30 * 86400.0}
    key_id = token.split("_")[1]
    assert f"key {key_id} of tenant acme" in err and "shown this once" in err
    assert cli("key", "ls", "--tenant", "acme", key=ADMIN) == 0
    assert key_id in capsys.readouterr().out
    assert cli("key", "revoke", key_id, key=ADMIN) == 0
    assert cli("ps", key=token) == 2
    assert "not valid" in capsys.readouterr().err


def test_key_create_without_scopes_gives_sandbox_and_batch(fake, capsys):
    assert cli("key", "create", "--tenant", "acme", "--json", key=ADMIN) == 0
    assert json.loads(capsys.readouterr().out)["scopes"] == ["sandbox", "batch"]


@pytest.mark.parametrize("expires", ["soon", "0d", "1w"])
def test_a_bad_expiry_is_a_usage_error(fake, capsys, expires):
    assert cli("key", "create", "--tenant", "acme", "--expires", expires, key=ADMIN) == 2
    assert "30d" in capsys.readouterr().err and fake.requests == []


def test_keys_are_for_admins(fake, capsys):
    assert cli("key", "ls") == 2


# ---- finding the fleet --------------------------------------------------------------------------

def test_the_environment_names_the_fleet_and_its_key(fake, monkeypatch, capsys):
    monkeypatch.setenv("TRYFLEET_URL", URL)
    monkeypatch.setenv("TRYFLEET_API_KEY", ADMIN)
    assert main(["status"]) == 0
    assert fake.requests[0].headers["authorization"] == f"Bearer {ADMIN}"


def test_with_no_fleet_up_the_fleet_commands_say_how_to_start_one(fake, capsys):
    for argv in (["status"], ["ps"], ["logs", "x"], ["cancel", "--all"], ["key", "ls"]):
        assert main(argv) == 125
        assert "tryfleet up" in capsys.readouterr().err
    assert fake.requests == []


@pytest.mark.parametrize("argv", [["up"], ["down"], ["image", "ls"], ["host", "info"],
                                  ["run", "--local", "--image", "base", "--", "true"],
                                  ["run", "--image", "base", "--", "true"]])
def test_without_the_fleet_side_what_needs_it_says_how_to_install_it(fake, monkeypatch, capsys,
                                                                     sigterm_kept, argv):
    monkeypatch.setattr(local, "fleet_side_missing", lambda: ["ray", "libvirt"])
    assert main(argv) == 125
    assert "pip install 'tryfleet[fleet]'" in capsys.readouterr().err


def test_help_is_written_for_users(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    assert "throwaway micro-VMs" in text and "README.md" in text
    for command in ("tryfleet run", "tryfleet up", "tryfleet batch", "logs ID",
                    "tryfleet key create", "TRYFLEET_URL"):
        assert command in text
    assert "dispatch" not in text and "commands/" not in text  # no developer notes


def _sources():
    return [(p.name, ast.parse(p.read_text())) for p in sorted(COMMANDS.glob("*.py"))]


def test_commands_use_only_the_public_sdk():
    for name, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "ray" for a in node.names), name
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "ray", name
                assert "actor" not in (node.module or ""), f"{name} imports {node.module}"
                assert (node.module or "") != "tryfleet.http", f"{name} uses the HTTP layer"
            if isinstance(node, ast.Attribute):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                assert not private, f"{name}:{node.lineno} uses .{node.attr}"
                assert node.attr not in ("node", "remote", "api"), \
                    f"{name}:{node.lineno} .{node.attr}"
