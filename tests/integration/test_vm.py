"""One real VM, many requests: what runs inside the guest and what it can see."""

import signal

import pytest

from tryfleet.nodeagent import GuestRequestError, SandboxSpec

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def box(node):
    sandbox = node.acquire(SandboxSpec("base", cpus=1, mem_mib=512))
    yield sandbox
    sandbox.destroy()


def test_exec_python_in_the_guest(box):
    r = box.exec(["python3", "-c", "print(6*7)"])
    assert (r.exit_code, r.stdout) == (0, b"42\n")


def test_exit_codes_and_stderr(box):
    r = box.exec(["sh", "-c", "echo oops >&2; exit 3"])
    assert (r.exit_code, r.stderr) == (3, b"oops\n")


def test_output_streams_while_the_command_runs(box):
    arrivals = []
    r = box.exec(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.5; done"],
                 on_output=lambda s, d: arrivals.append(d))
    assert b"".join(arrivals) == r.stdout == b"1\n2\n3\n" and len(arrivals) == 3


def test_stdin_env_and_cwd(box):
    r = box.exec(["sh", "-c", 'cat; echo "$WHO"; pwd'], stdin=b"from stdin\n",
                 env={"WHO": "agent"}, cwd="/tmp")
    assert r.stdout == b"from stdin\nagent\n/tmp\n"


def test_files_both_ways(box):
    payload = bytes(range(256)) * 4000  # ~1 MiB, several chunks
    box.write_file("/root/in/data.bin", payload)
    r = box.exec(["sh", "-c", "sha256sum /root/in/data.bin | cut -c1-64 > /root/sum.txt"])
    assert r.exit_code == 0
    import hashlib
    assert box.read_file("/root/sum.txt").strip() == hashlib.sha256(payload).hexdigest().encode()
    assert box.read_file("/root/in/data.bin") == payload


def test_missing_guest_file_is_a_clear_error(box):
    with pytest.raises(GuestRequestError, match="No such file"):
        box.read_file("/root/does-not-exist")


def test_signal_is_reported(box):
    r = box.exec(["sh", "-c", "kill -KILL $$"])
    assert (r.exit_code, r.signal) == (None, signal.SIGKILL)


def test_timeout_kills_the_command_and_the_guest_stays_usable(box):
    r = box.exec(["sleep", "60"], timeout_s=1)
    assert r.timed_out and r.duration_s < 5
    assert box.exec(["true"]).exit_code == 0


def test_output_cap_cuts_and_flags(box):
    r = box.exec(["sh", "-c", "head -c 5000000 /dev/zero"], max_output=100_000)
    assert len(r.stdout) == 100_000 and r.stdout_truncated


def test_no_network_device_but_loopback(box):
    assert box.exec(["ls", "/sys/class/net"]).stdout.split() == [b"lo"]


def test_host_files_are_invisible(box, tmp_path):
    marker = tmp_path / "host-secret.txt"
    marker.write_text("host only")
    r = box.exec(["cat", str(marker)])
    assert r.exit_code != 0 and b"host only" not in r.stdout
    mounts = box.exec(["cat", "/proc/mounts"]).stdout
    assert b"9p" not in mounts and b"virtiofs" not in mounts
