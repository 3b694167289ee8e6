"""Processes in an open sandbox through the node agent's service, on the fake hypervisor (the
real guest agent in a thread): started and left running, listed, followed (late too, with what
they printed replayed), fed stdin, signalled, and all ended with their sandbox."""

import signal
import threading

import pytest

from tests.unit.builders import make_image
from tests.waiting import until
from tryfleet.errors import BadRequest
from tryfleet.nodeagent import procs
from tryfleet.nodeagent.actor import NodeActor
from tryfleet.nodeagent.fake_hv import FakeHypervisor
from tryfleet.nodeagent.node import NodeConfig
from tryfleet.nodeagent.service import NodeService
from tryfleet.wire import (
    ProcessGone,
    ProcEvent,
    ProcEventKind,
    ProcInfo,
    ProcStart,
    SandboxGone,
    SandboxOpen,
    pack,
    unpack,
    unpack_list,
)

START, OUTPUT, KEEPALIVE, END = (ProcEventKind.START, ProcEventKind.OUTPUT,
                                 ProcEventKind.KEEPALIVE, ProcEventKind.END)


@pytest.fixture
def svc(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    make_image(tmp_path, "base")
    s = NodeService(NodeConfig(data_dir=tmp_path), "h1", FakeHypervisor())
    s.sandbox_open("h1", SandboxOpen("sbx", "base", timeout_s=120))
    yield s
    s.close()


def start(svc, *argv, **kw):
    return svc.sandbox_proc_start("h1", "sbx", ProcStart(tuple(argv), **kw))


def follow(svc, pid, **kw):
    return svc.sandbox_proc_follow("h1", "sbx", pid, **kw)


def output_of(events, stream=1):
    return b"".join(e.data for e in events if e.kind is OUTPUT and e.stream == stream)


def listed(svc, pid):
    return next(i for i in svc.sandbox_proc_list("h1", "sbx") if i.pid == pid)


def test_a_start_returns_the_pid_while_the_process_runs_on_and_it_is_listed(svc):
    info = start(svc, "sleep", "100", tag="napper", env=(("TOKEN", "s3cret"),))
    assert info.pid > 0 and info.running and info.tag == "napper"
    got = listed(svc, info.pid)
    assert (got.argv, got.env_names, got.running) == (("sleep", "100"), ("TOKEN",), True)
    assert b"s3cret" not in pack(svc.sandbox_proc_list("h1", "sbx"))  # names, not values


def test_two_processes_at_once_keep_their_output_apart(svc):
    loop = "i=0; while [ $i -lt 200 ]; do echo {0}$i; echo {0}e$i >&2; i=$((i+1)); done"
    a = start(svc, "sh", "-c", loop.format("a"))
    b = start(svc, "sh", "-c", loop.format("b"))
    for info, name in ((a, "a"), (b, "b")):
        events = list(follow(svc, info.pid))
        assert output_of(events, 1) == b"".join(f"{name}{i}\n".encode() for i in range(200))
        assert output_of(events, 2) == b"".join(f"{name}e{i}\n".encode() for i in range(200))
        assert events[-1].info.exit_code == 0


def test_a_late_subscriber_gets_the_replay_then_the_end_of_a_signalled_process(svc):
    info = start(svc, "sh", "-c", "echo early; echo warn >&2; exec sleep 100")
    first = follow(svc, info.pid)
    assert next(first).kind is START
    seen = b""
    while b"early" not in seen:
        seen += next(first).data
    svc.sandbox_proc_signal("h1", "sbx", info.pid, signal.SIGTERM)
    assert [e.kind for e in first][-1] is END
    late = list(follow(svc, info.pid))
    assert (late[0].kind, late[-1].kind) == (START, END)
    assert (output_of(late, 1), output_of(late, 2)) == (b"early\n", b"warn\n")
    assert (late[-1].info.running, late[-1].info.signal) == (False, signal.SIGTERM)
    assert listed(svc, info.pid).signal == signal.SIGTERM


def test_stdin_is_written_then_closed_and_cat_echoes_it(svc):
    info = start(svc, "cat", stdin=True)
    assert info.stdin_open
    svc.sandbox_proc_input("h1", "sbx", info.pid, b"hello ")
    svc.sandbox_proc_input("h1", "sbx", info.pid, b"x" * 600_000)  # several wire chunks
    svc.sandbox_proc_close_stdin("h1", "sbx", info.pid)
    events = list(follow(svc, info.pid))
    assert output_of(events) == b"hello " + b"x" * 600_000
    assert events[-1].info.exit_code == 0


def test_start_and_follow_in_one_stream(svc):
    events = list(svc.sandbox_proc_run("h1", "sbx", ProcStart(("sh", "-c", "echo hi; exit 3"))))
    assert events[0].kind is START and events[0].pid > 0
    assert output_of(events) == b"hi\n" and events[-1].info.exit_code == 3


def test_a_subscriber_that_wants_no_replay_sees_only_what_comes_after(svc):
    info = start(svc, "sh", "-c", "echo before; read x; echo after", stdin=True)
    until(lambda: b"before" in output_of(_taken(follow(svc, info.pid), 2)))
    fresh = follow(svc, info.pid, replay=False)
    assert next(fresh).kind is START
    svc.sandbox_proc_input("h1", "sbx", info.pid, b"go\n", eof=True)
    assert output_of(list(fresh)) == b"after\n"


def _taken(events, n):
    return [e for _, e in zip(range(n), events, strict=False)]


def test_a_silent_process_gets_keepalives(svc):
    info = start(svc, "sleep", "100")
    events = follow(svc, info.pid, keepalive_s=0.05)
    assert [next(events).kind for _ in range(3)] == [START, KEEPALIVE, KEEPALIVE]


def test_unfollowing_ends_the_stream_and_the_process_runs_on(svc):
    info = start(svc, "sleep", "100")
    events = svc.sandbox_proc_follow("h1", "sbx", info.pid, follow_id="f1")
    assert next(events).kind is START
    ended = threading.Event()
    threading.Thread(target=lambda: (list(events), ended.set()), daemon=True).start()
    assert svc.sandbox_proc_unfollow("h1", "sbx", "f1") is True
    assert ended.wait(10) and listed(svc, info.pid).running
    assert svc.sandbox_proc_unfollow("h1", "sbx", "f1") is False


def test_a_process_times_out(svc):
    info = start(svc, "sleep", "100", timeout_s=0.2)
    end = list(follow(svc, info.pid))[-1].info
    assert (end.timed_out, end.signal) == (True, signal.SIGKILL)


def test_closing_the_sandbox_ends_its_processes_and_tells_their_followers(svc):
    info = start(svc, "sleep", "100")
    events = follow(svc, info.pid)
    assert next(events).kind is START
    svc.sandbox_close("h1", "sbx")
    end = next(events)
    assert end.kind is END and not end.info.running and "closed" in end.info.error


def test_a_guest_that_dies_ends_every_process(svc):
    a, b = start(svc, "sleep", "100"), start(svc, "sleep", "100")
    svc.node.hv.crash(svc.node.live()[0])
    for info in (a, b):
        end = list(follow(svc, info.pid))[-1]
        assert end.kind is END and "crashed" in end.info.error
    with pytest.raises(SandboxGone):
        start(svc, "true")


@pytest.mark.parametrize("call, error", [
    (lambda svc, pid: svc.sandbox_proc_signal("h1", "sbx", 999_999, 15), ProcessGone),
    (lambda svc, pid: svc.sandbox_proc_input("h1", "sbx", pid, b"x"), BadRequest),
    (lambda svc, pid: svc.sandbox_proc_signal("h1", "sbx", pid, 0), BadRequest),
    (lambda svc, pid: follow(svc, 999_999), ProcessGone),
])
def test_calls_that_name_no_such_process_or_cannot_be_honoured_are_refused(svc, call, error):
    pid = start(svc, "sleep", "100").pid  # without stdin
    with pytest.raises(error):
        call(svc, pid)


def test_signal_and_stdin_for_a_process_that_ended_are_refused(svc):
    info = start(svc, "cat", stdin=True)
    svc.sandbox_proc_close_stdin("h1", "sbx", info.pid)
    until(lambda: not listed(svc, info.pid).running)
    with pytest.raises(ProcessGone, match="ended"):
        svc.sandbox_proc_signal("h1", "sbx", info.pid, 9)
    with pytest.raises(ProcessGone, match="ended"):
        svc.sandbox_proc_input("h1", "sbx", info.pid, b"late")


@pytest.mark.parametrize("req, problem", [
    (ProcStart(()), "argv"),
    (ProcStart(("true",), env=(("A=B", "x"),)), "environment"),
    (ProcStart(("true",), cwd="relative"), "cwd"),
    (ProcStart(("true",), user="Not A User"), "user"),
    (ProcStart(("true",), timeout_s=-1), "timeout_s"),
    (ProcStart(("no-such-command-here",)), "no-such-command-here"),
])
def test_a_start_that_cannot_run_is_a_bad_request(svc, req, problem):
    with pytest.raises(BadRequest, match=problem):
        svc.sandbox_proc_start("h1", "sbx", req)


def test_running_processes_are_bounded(svc, monkeypatch):
    monkeypatch.setattr(procs, "MAX_RUNNING", 2)
    start(svc, "sleep", "100")
    start(svc, "sleep", "100")
    with pytest.raises(BadRequest, match="at most 2"):
        start(svc, "sleep", "100")


def test_only_the_last_ended_processes_stay_listed(svc, monkeypatch):
    monkeypatch.setattr(procs, "KEEP_ENDED", 2)
    pids = []
    for _ in range(4):  # one after the other: they end in this order
        pids.append(start(svc, "true").pid)
        list(follow(svc, pids[-1]))
    assert [i.pid for i in svc.sandbox_proc_list("h1", "sbx")] == pids[2:]


def test_a_process_runs_as_the_user_named(svc):
    root = svc.node.hv.guest_root(svc.node.live()[0])
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                     "user:x:1000:1000::/home/user:/bin/bash\n")
    (root / "etc/group").write_text("user:x:1000:\nusers:x:100:user\n")
    (root / "home/user").mkdir(parents=True)
    info = start(svc, "sh", "-c", "echo $HOME $USER $LOGNAME $SHELL; pwd", user="user")
    out = output_of(list(follow(svc, info.pid))).decode().split("\n")
    assert out[0] == "/home/user user user /bin/bash" and out[1].endswith("/home/user")
    with pytest.raises(BadRequest, match="no user 'nobody-here'"):
        start(svc, "true", user="nobody-here")


def test_process_records_cross_the_wire():
    info = ProcInfo(7, "t", ("sh",), None, "user", ("A",), 1.5, running=False, exit_code=2)
    event = ProcEvent(END, 7, info=info)
    assert unpack(ProcEvent, pack(event)) == event
    req = ProcStart(("a",), (("K", "V"),), "/w", "user", True, 3.0, "tag")
    assert unpack(ProcStart, pack(req)) == req


def test_the_node_actor_speaks_processes_in_wire_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    actor = NodeActor(str(tmp_path), "h1", fake=True)
    try:
        actor.sandbox_open("h1", pack(SandboxOpen("s1", "base")))
        started = unpack(ProcInfo, actor.sandbox_proc_start(
            "h1", "s1", pack(ProcStart(("cat",), stdin=True, tag="echo")))).pid
        assert [i.tag for i in unpack_list(ProcInfo, actor.sandbox_proc_list("h1", "s1"))] == [
            "echo"]
        actor.sandbox_proc_input("h1", "s1", started, b"hi", False)
        actor.sandbox_proc_close_stdin("h1", "s1", started)
        events = [unpack(ProcEvent, b) for b in actor.sandbox_proc_follow("h1", "s1", started)]
        assert output_of(events) == b"hi" and events[-1].kind is END
        run = [unpack(ProcEvent, b) for b in actor.sandbox_proc_run(
            "h1", "s1", pack(ProcStart(("sh", "-c", "kill -TERM $$"))))]
        assert run[-1].info.signal == signal.SIGTERM
        with pytest.raises(ProcessGone):
            actor.sandbox_proc_signal("h1", "s1", started, 9)
    finally:
        actor.shutdown()
