"""The fleet commands as a user types them, against the real scheduler and ledger in this
process (tests/unit/localfleet.py) instead of Ray; and what the commands may use of the SDK."""

import ast
import json
import pathlib
import signal

import pytest

import tryfleet.fleet
from tests.waiting import until
from tryfleet.cli import main
from tryfleet.scheduler.core import Finish
from tryfleet.scheduler.records import Iteration
from tryfleet.wire import State

from .localfleet import FAST, Delays, Printing, SimHostSpec, local_fleet

COMMANDS = pathlib.Path(tryfleet.fleet.__file__).parent / "commands"


@pytest.fixture
def sigterm_kept():
    """`tryfleet run` turns SIGTERM into KeyboardInterrupt: put the old handler back."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.fixture
def fleet_of(tmp_path, monkeypatch):
    """Start a local fleet over the given simulated hosts; the CLI's connect() finds it."""
    opened = []

    def start(sim):
        ctx = local_fleet(tmp_path, sim)
        fleet, sched, transport = ctx.__enter__()
        opened.append(ctx)
        monkeypatch.setattr(tryfleet.fleet, "connect", lambda *a, **kw: fleet)
        return fleet, sched, transport

    yield start
    for ctx in opened:
        ctx.__exit__(None, None, None)


def test_run_puts_a_binary_file_through_the_fleet_byte_for_byte(tmp_path, fleet_of, capfdbinary,
                                                                 sigterm_kept):
    data = bytes(range(256)) + b"\xff\xfe not utf-8 \x00"
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    sim = Printing([SimHostSpec("a")], FAST, b"printed\n")
    fleet_of(sim)
    code = main(["run", "--address", "local", "--image", "base", "--put", f"{src}:/root/blob",
                 "--", "sha256sum", "/root/blob"])
    out, err = capfdbinary.readouterr()
    assert code == 0, err
    assert out == b"printed\n"
    (request,) = sim.requests
    assert dict(request.spec.put) == {"/root/blob": data}


def test_ps_lists_queued_and_running_and_all_with_all(tmp_path, fleet_of, capsys):
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=60_000, exec_sigma=0.01)
    fleet, sched, _ = fleet_of(Printing([SimHostSpec("a", cpus=1)], slow))
    fleet.submit([Iteration("base", ("x",), id=f"p{i}") for i in range(2)], suite="ps")
    sched.ledger.submit([Iteration("base", ("x",), id="old")], "done", "t")
    sched.ledger.commit([Finish("t/old", 0, State.CANCELLED, "cancelled", queued=True)])
    until(lambda: fleet.iterations(states=["RUNNING"]))
    assert main(["ps", "--address", "local"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ID", "SUITE", "TENANT", "STATE"]
    assert sorted(line.split()[3] for line in lines[1:]) == ["QUEUED", "RUNNING"]
    assert main(["ps", "--address", "local", "--all"]) == 0
    assert "CANCELLED" in capsys.readouterr().out


def test_logs_of_a_running_iteration_shows_its_output_so_far(tmp_path, fleet_of, capfdbinary):
    slow = Delays(seed=1, boot_median_ms=1, exec_median_ms=60_000, exec_sigma=0.01)
    fleet, _, _ = fleet_of(Printing([SimHostSpec("a")], slow, b"first half|other half"))
    (iid,) = fleet.submit([Iteration("base", ("x",), id="live")], suite="logs")
    until(lambda: fleet.output(iid).stdout)
    assert main(["logs", "--address", "local", iid]) == 0
    out, err = capfdbinary.readouterr()
    assert out == b"first half"  # what it has printed so far (the simulation: half)
    assert b"live: RUNNING on a" in err and b"attempt 1 on a: running" in err


def test_logs_of_an_ended_iteration_and_of_an_unknown_one(tmp_path, fleet_of, capfdbinary):
    fleet, _, _ = fleet_of(Printing([SimHostSpec("a")], FAST, b"\xff all of it"))
    (iid,) = fleet.submit([Iteration("base", ("x",), id="ended")], suite="logs")
    fleet.wait([iid], timeout_s=30)
    assert main(["logs", "--address", "local", iid]) == 0
    out, err = capfdbinary.readouterr()
    assert out == b"\xff all of it" and b"ended: SUCCEEDED exit 0 on a" in err
    assert main(["logs", "--address", "local", "nosuch"]) == 2
    assert b"no iteration 'nosuch'" in capfdbinary.readouterr().err


def test_batch_waits_by_cursor_and_writes_every_result(tmp_path, fleet_of, capsys):
    _, _, transport = fleet_of(Printing([SimHostSpec("a", cpus=4)], FAST, b"ok\n"))
    specs, out = tmp_path / "specs.jsonl", tmp_path / "results.jsonl"
    specs.write_text("".join(json.dumps({"image": "base", "command": ["x", str(i)]}) + "\n"
                             for i in range(30)))
    code = main(["batch", str(specs), "--suite", "b", "--address", "local", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"b-{i}" for i in range(1, 31))
    assert {r["state"] for r in rows} == {"SUCCEEDED"} and rows[0]["stdout"] == "ok\n"
    polls = [args for method, args in transport.calls if method == "ended_since"]
    assert polls and all(args[1] == "b" and args[2] is None for args in polls)


def test_submit_of_what_no_host_can_run_is_a_usage_error(tmp_path, fleet_of, capsys,
                                                         sigterm_kept):
    fleet_of(Printing([SimHostSpec("a", cpus=2, mem_mib=4096)], FAST))
    code = main(["run", "--address", "local", "--image", "base", "--mem-mib", "999999", "--",
                 "true"])
    assert code == 2 and "can never run" in capsys.readouterr().err


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


def test_help_is_written_for_users(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    assert "throwaway micro-VMs" in text and "README.md" in text
    for command in ("tryfleet run", "tryfleet up", "tryfleet batch", "logs ID"):
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
            if isinstance(node, ast.Attribute):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                assert not private, f"{name}:{node.lineno} uses .{node.attr}"
                assert node.attr not in ("node", "remote"), f"{name}:{node.lineno} .{node.attr}"
