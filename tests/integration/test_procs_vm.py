"""Processes in one real VM of the base image, through the node agent's service: commands at
once, as E2B's `user` and as root, in the background, fed stdin."""

import signal
import threading

import pytest

from tryfleet.errors import BadRequest
from tryfleet.nodeagent.node import NodeConfig
from tryfleet.nodeagent.service import NodeService
from tryfleet.wire import ExecRequest, ProcEventKind, ProcStart, SandboxOpen

pytestmark = pytest.mark.vm
HOST, SID = "procs-vm", "sbx-procs"


@pytest.fixture(scope="module")
def svc(data_dir):
    s = NodeService(NodeConfig(data_dir=data_dir), HOST)
    try:
        s.sandbox_open(HOST, SandboxOpen(SID, "base", mem_mib=512, timeout_s=1800))
        yield s
    finally:
        s.close()


def bash(cmd, **kw):
    """A command as E2B's SDKs send it."""
    return ProcStart(("/bin/bash", "-l", "-c", cmd), **kw)


def output(events, stream=1):
    return b"".join(e.data for e in events if e.kind is ProcEventKind.OUTPUT
                    and e.stream == stream)


def test_two_commands_at_once_in_one_sandbox(svc):
    # Each waits for the other's mark: one at a time, neither could finish before its timeout.
    script = "touch /tmp/{0}; while [ ! -e /tmp/{1} ]; do sleep 0.05; done; echo {0}"
    got = {}

    def run(mine, theirs):
        got[mine] = svc.sandbox_exec(HOST, SID, ExecRequest(
            ("sh", "-c", script.format(mine, theirs)), timeout_s=120))

    threads = [threading.Thread(target=run, args=p) for p in (("a", "b"), ("b", "a"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert {k: (r.stdout, r.timed_out) for k, r in got.items()} == {
        "a": (b"a\n", False), "b": (b"b\n", False)}


def test_whoami_and_home_as_user_and_as_root(svc):
    as_user = list(svc.sandbox_proc_run(HOST, SID, bash("whoami; echo $HOME; pwd; id -u",
                                                        user="user")))
    assert output(as_user) == b"user\n/home/user\n/home/user\n1000\n"
    assert as_user[-1].info.exit_code == 0
    as_root = svc.sandbox_exec(HOST, SID, ExecRequest(
        ("/bin/bash", "-l", "-c", "whoami; echo $HOME; pwd; id -u"), user="root"))
    assert as_root.stdout == b"root\n/root\n/root\n0\n"
    owner = svc.sandbox_exec(HOST, SID, ExecRequest(("stat", "-c", "%U %a", "/home/user")))
    assert owner.stdout.split()[0] == b"user"
    with pytest.raises(BadRequest, match="no user 'ghost'"):
        svc.sandbox_proc_start(HOST, SID, bash("true", user="ghost"))


def test_a_background_sleep_is_listed_then_killed(svc):
    info = svc.sandbox_proc_start(HOST, SID, ProcStart(("sleep", "100"), tag="napper"))
    listed = {i.pid: i for i in svc.sandbox_proc_list(HOST, SID)}
    assert listed[info.pid].running and listed[info.pid].tag == "napper"
    svc.sandbox_proc_signal(HOST, SID, info.pid, signal.SIGKILL)
    end = list(svc.sandbox_proc_follow(HOST, SID, info.pid))[-1]
    assert end.kind is ProcEventKind.END and end.info.signal == signal.SIGKILL
    assert not {i.pid: i for i in svc.sandbox_proc_list(HOST, SID)}[info.pid].running


def test_cat_echoes_what_is_written_to_its_stdin(svc):
    info = svc.sandbox_proc_start(HOST, SID, ProcStart(("cat",), stdin=True, user="user"))
    svc.sandbox_proc_input(HOST, SID, info.pid, b"hello from stdin\n")
    svc.sandbox_proc_close_stdin(HOST, SID, info.pid)
    events = list(svc.sandbox_proc_follow(HOST, SID, info.pid))
    assert output(events) == b"hello from stdin\n" and events[-1].info.exit_code == 0
