"""The node agent's interactive sandboxes on the fake hypervisor (the real guest agent in a
thread): open, exec, files, extend, its own expiry, a VM that dies, paths checked first."""

import threading
import time

import pytest

from tests.unit.builders import make_image
from tests.waiting import until
from tryfleet.errors import BadRequest
from tryfleet.nodeagent import interactive
from tryfleet.nodeagent.errors import GuestPathMissing
from tryfleet.nodeagent.fake_hv import FakeHypervisor
from tryfleet.nodeagent.node import NodeConfig
from tryfleet.nodeagent.service import NodeService
from tryfleet.wire import ExecRequest, FileType, SandboxGone, SandboxOpen


@pytest.fixture
def svc(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    make_image(tmp_path, "base")
    s = NodeService(NodeConfig(data_dir=tmp_path), "h1", FakeHypervisor())
    yield s
    s.close()


def opened(svc, sid="sbx-1", timeout_s=60.0):
    svc.sandbox_open("h1", SandboxOpen(sid, "base", timeout_s=timeout_s))
    return sid


def test_open_exec_and_close(svc):
    sid = opened(svc)
    assert svc.sandbox_list("h1") == [sid]
    r = svc.sandbox_exec("h1", sid, ExecRequest(("sh", "-c", "echo $((6*7))")))
    assert (r.exit_code, r.stdout) == (0, b"42\n")
    assert svc.sandbox_close("h1", sid) is True and svc.sandbox_close("h1", sid) is False
    assert svc.sandbox_list("h1") == [] and svc.node.live() == []
    with pytest.raises(SandboxGone):
        svc.sandbox_exec("h1", sid, ExecRequest(("true",)))


def test_opening_the_same_sandbox_again_gives_the_same_vm(svc):
    vm = svc.sandbox_open("h1", SandboxOpen("sbx-1", "base"))
    assert svc.sandbox_open("h1", SandboxOpen("sbx-1", "base")) == vm
    assert len(svc.node.live()) == 1


def test_files_through_the_service(svc):
    sid = opened(svc)
    svc.sandbox_mkdir("h1", sid, "/data/in")
    svc.sandbox_write("h1", sid, "/data/in/f.bin", bytes(range(256)), 0o600)
    svc.sandbox_write("h1", sid, "/data/in/f.bin", b"!", 0o600, append=True)
    assert svc.sandbox_read("h1", sid, "/data/in/f.bin") == bytes(range(256)) + b"!"
    assert svc.sandbox_read("h1", sid, "/data/in/f.bin", 255, 10) == b"\xff!"
    listing = svc.sandbox_list_dir("h1", sid, "/data", 2)
    assert [(e.path, e.type) for e in listing.entries] == [
        ("/data/in", FileType.DIR), ("/data/in/f.bin", FileType.FILE)]
    assert svc.sandbox_move("h1", sid, "/data/in/f.bin", "/data/g.bin").size == 257
    svc.sandbox_remove("h1", sid, "/data", recursive=True)
    with pytest.raises(GuestPathMissing):
        svc.sandbox_stat("h1", sid, "/data")


@pytest.mark.parametrize("path", ["relative", "/a/../etc", "/a//b", "/a/./b", "/a/", "",
                                  "/nul\x00", "/" + "x" * 5000])
def test_paths_are_checked_before_they_reach_the_guest(svc, path):
    sid = opened(svc)
    with pytest.raises(BadRequest):
        svc.sandbox_stat("h1", sid, path)


def test_the_root_directory_cannot_be_removed(svc):
    with pytest.raises(BadRequest, match="root"):
        svc.sandbox_remove("h1", opened(svc), "/", recursive=True)


def test_a_sandbox_whose_vm_died_is_gone_and_dropped(svc):
    sid = opened(svc)
    svc.node.hv.crash(svc.node.live()[0])
    with pytest.raises(SandboxGone, match="VM stopped"):
        svc.sandbox_exec("h1", sid, ExecRequest(("true",)))
    assert svc.sandbox_list("h1") == []


def test_closing_a_sandbox_ends_the_command_running_in_it(svc):
    sid = opened(svc)
    stream = svc.sandbox_exec_stream("h1", sid, ExecRequest(("sh", "-c",
                                                            "echo up; sleep 30")))
    assert next(stream).data == b"up\n"
    svc.sandbox_close("h1", sid)
    with pytest.raises(SandboxGone, match="closed"):
        list(stream)


def test_two_commands_at_once_in_one_sandbox_both_answer(svc):
    sid = opened(svc)
    got = {}

    def run(n):
        got[n] = svc.sandbox_exec("h1", sid, ExecRequest(("sh", "-c", f"sleep 0.2; echo {n}")))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {n: r.stdout for n, r in got.items()} == {n: f"{n}\n".encode() for n in range(3)}


def test_the_node_closes_a_sandbox_nobody_closed_after_its_timeout(svc, monkeypatch):
    monkeypatch.setattr(interactive, "EXPIRY_GRACE_S", 0.0)
    sid = opened(svc, timeout_s=0.3)
    until(lambda: svc.sandbox_list("h1") == [], timeout_s=10)
    until(lambda: svc.node.live() == [], timeout_s=10)  # its VM goes right after, in the timer
    with pytest.raises(SandboxGone):
        svc.sandbox_read("h1", sid, "/etc/hostname")


def test_extending_moves_the_nodes_own_expiry(svc, monkeypatch):
    monkeypatch.setattr(interactive, "EXPIRY_GRACE_S", 0.0)
    sid = opened(svc, timeout_s=0.3)
    svc.sandbox_extend("h1", sid, 60.0)
    time.sleep(0.6)  # past the first timeout: nothing to wait for but time itself
    assert svc.sandbox_list("h1") == [sid]
    svc.sandbox_extend("h1", sid, 0.1)
    until(lambda: svc.sandbox_list("h1") == [], timeout_s=10)


def test_a_streamed_command_nobody_reads_any_more_is_killed_on_request(svc):
    sid = opened(svc)
    stream = svc.sandbox_exec_stream("h1", sid, ExecRequest(("sh", "-c", "echo up; sleep 30")),
                                     "e1")
    assert next(stream).data == b"up\n"
    assert svc.sandbox_exec_cancel("h1", sid, "e1") is True
    (last,) = list(stream)
    assert last.reply is not None and last.reply.exit_code is None
    assert svc.sandbox_exec_cancel("h1", sid, "e1") is False  # it ended
    r = svc.sandbox_exec("h1", sid, ExecRequest(("echo", "free")))  # the sandbox is free
    assert r.stdout == b"free\n"
