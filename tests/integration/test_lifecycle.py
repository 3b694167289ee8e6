"""Whole iterations in real VMs: every ending leaves nothing behind."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tryfleet.nodeagent import IterationSpec, NodeAgent, NodeConfig, State

from .conftest import tryfleet_domains

pytestmark = pytest.mark.vm


def it(*argv, **kw):
    return IterationSpec(image="base", argv=argv, **kw)


def test_success(node, leaves_nothing):
    out = node.run_iteration(it("python3", "-c", "print(6*7)"))
    assert (out.state, out.exit_code, out.stdout) == (State.SUCCEEDED, 0, b"42\n")


def test_failure_keeps_the_console_log(node, leaves_nothing):
    out = node.run_iteration(it("sh", "-c", "exit 3"))
    assert (out.state, out.exit_code) == (State.FAILED, 3)
    assert b"tryfleet-agent: ready" in (out.kept_logs / "console.log").read_bytes()
    assert "<domain" in (out.kept_logs / "domain.xml").read_text()


def test_timeout(node, leaves_nothing):
    out = node.run_iteration(it("sleep", "60", timeout_s=2))
    assert out.state is State.TIMED_OUT


def test_guest_poweroff_is_an_infra_error(node, leaves_nothing):
    out = node.run_iteration(it("sh", "-c", "echo o > /proc/sysrq-trigger; sleep 30"))
    assert out.state is State.INFRA_ERROR and "guest" in out.error


def test_guest_kernel_crash_is_an_infra_error(node, leaves_nothing):
    out = node.run_iteration(it("sh", "-c", "echo c > /proc/sysrq-trigger; sleep 30"))
    assert out.state is State.INFRA_ERROR and "guest" in out.error
    assert out.kept_logs is not None


def test_files_in_and_out(node, leaves_nothing):
    out = node.run_iteration(it("sh", "-c", "wc -c < /root/in.txt > /root/count.txt",
                                put=(("/root/in.txt", b"x" * 1234),), get=("/root/count.txt",)))
    assert dict(out.files)["/root/count.txt"].strip() == b"1234"


def test_disk_quota_grows_the_root_filesystem(node, leaves_nothing):
    base = node.store.get("base").disk_mib
    out = node.run_iteration(it("sh", "-c", "df -m / | tail -1", disk_mib=base + 1024))
    size_mib = int(out.stdout.split()[1])
    assert out.state is State.SUCCEEDED and size_mib > base + 512


CRASHING_RUN = textwrap.dedent("""
    import sys, time
    from tryfleet.nodeagent import NodeAgent, NodeConfig, SandboxSpec
    from pathlib import Path
    node = NodeAgent(NodeConfig(data_dir=Path(sys.argv[1])))
    box = node.acquire(SandboxSpec("base"))
    print(box.name, node.owner.dir, flush=True)
    time.sleep(600)
""")


def test_reaper_cleans_up_after_a_killed_run(data_dir):
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_RUN, str(data_dir)],
                            stdout=subprocess.PIPE, text=True)
    name, owner_dir = proc.stdout.readline().split()
    assert name in tryfleet_domains() and os.path.isdir(owner_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    node = NodeAgent(NodeConfig(data_dir=data_dir))
    try:
        assert name not in tryfleet_domains()
        assert not os.path.exists(owner_dir)
        assert os.path.basename(owner_dir) in node.reaped.dirs
    finally:
        node.close()
