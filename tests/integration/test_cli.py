"""`tryfleet run` and `tryfleet host info` as a user types them."""

import hashlib
import json
import os

import pytest

from tests.waiting import until

from .conftest import cli, leftover_domains

vm = pytest.mark.vm


def overlays_left(data_dir):
    return list((data_dir / "run").glob("*/tryfleet-*/disk.qcow2"))


def left_nothing(data_dir):
    """No domain and no overlay of a finished run: a guest the run was still saving when it
    ended goes with its libvirt connection, which libvirtd closes a moment after the exit."""
    until(lambda: leftover_domains(data_dir) == [], timeout_s=30,
          explain=lambda: leftover_domains(data_dir))
    return overlays_left(data_dir) == []


@vm
def test_run_prints_and_exits_with_the_command(data_dir):
    r = cli("run", "--image", "base", "--", "python3", "-c", "print(6*7)")
    assert (r.returncode, r.stdout) == (0, "42\n")
    r = cli("run", "--image", "base", "--", "sh", "-c", "exit 3")
    assert r.returncode == 3
    assert left_nothing(data_dir)


@vm
def test_run_timeout_says_so(data_dir):
    r = cli("run", "--image", "base", "--timeout-s", "2", "--", "sleep", "60")
    assert r.returncode == 124 and "timed out" in r.stderr
    assert left_nothing(data_dir)


@vm
def test_guest_has_only_loopback():
    r = cli("run", "--image", "base", "--", "ls", "/sys/class/net")
    assert (r.returncode, r.stdout) == (0, "lo\n")


@vm
def test_put_and_get(tmp_path):
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("abc")
    r = cli("run", "--image", "base", "--put", f"{src}:/root/in.txt",
            "--get", f"/root/out.txt:{dst}", "--", "sh", "-c",
            "tr a-z A-Z < /root/in.txt > /root/out.txt")
    assert r.returncode == 0, r.stderr
    assert dst.read_text() == "ABC"


@vm
def test_put_of_a_binary_file_is_byte_for_byte(tmp_path):
    data = bytes(range(256)) * 64 + b"\xff\xfe not utf-8 \x00"
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    r = cli("run", "--local", "--image", "base", "--put", f"{src}:/root/blob", "--",
            "sha256sum", "/root/blob")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest()


def test_more_memory_than_the_host_has_is_a_usage_error_before_any_vm(data_dir):
    r = cli("run", "--local", "--image", "base", "--mem-mib", str(1 << 30), "--", "true")
    assert r.returncode == 2 and "MiB of memory in all" in r.stderr and "QEMU" not in r.stderr
    assert left_nothing(data_dir)


def test_help_says_what_tryfleet_is():
    r = cli("--help")
    assert r.returncode == 0 and "throwaway micro-VMs" in r.stdout and "README.md" in r.stdout


def test_unknown_image_lists_the_known_ones():
    r = cli("run", "--image", "nosuch", "--", "true")
    assert r.returncode == 125 and "nosuch" in r.stderr and "base" in r.stderr


def test_bad_flags_are_usage_errors():
    assert cli("run", "--image", "base").returncode == 2
    r = cli("run", "--image", "base", "--put", "nocolon", "--", "true")
    assert r.returncode == 2 and "LOCAL:REMOTE" in r.stderr
    r = cli("run", "--image", "base", "--put", "/no/such/file:/root/x", "--", "true")
    assert r.returncode == 2 and "/no/such/file" in r.stderr


def test_host_info_json_names_the_accelerator_and_why():
    # The probe itself (a canary guest under KVM, TCG when it hangs) is tested on the fake
    # hypervisor in tests/unit/test_host.py, and every real-VM test here boots under its
    # answer; here the answer is given, so the command's report has one right content.
    r = cli("host", "info", "--json", env={"TRYFLEET_ACCEL": "tcg"})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["accel"], info["accel_reason"]) == ("tcg", "forced by TRYFLEET_ACCEL")
    assert info["capacity"]["cpus"] == os.cpu_count() and "cpu_some_avg10" in info["pressure"]
    assert "base" in info["images"]
