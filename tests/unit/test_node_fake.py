"""The node agent's whole lifecycle on the fake hypervisor: real agent, real channel, no VM."""

import json
import subprocess

import pytest

from tests.unit.builders import make_image
from tryfleet.errors import InfrastructureError
from tryfleet.nodeagent import (
    BadRequest,
    GuestUnresponsive,
    IterationSpec,
    NodeAgent,
    NodeConfig,
    SandboxSpec,
    State,
)
from tryfleet.nodeagent.fake_hv import FakeHypervisor
from tryfleet.nodeagent.reaper import OWNER_FILE


@pytest.fixture
def data_dir(tmp_path):
    make_image(tmp_path, "base")
    return tmp_path


def make_node(data_dir, **fake):
    return NodeAgent(NodeConfig(data_dir=data_dir), FakeHypervisor(**fake))


def nothing_left(node):
    vm_dirs = [p for p in node.owner.dir.iterdir() if p.is_dir()]
    return node.hv.list_domains() == [] and vm_dirs == [] and node.live() == []


def it(*argv, **kw):
    return IterationSpec(image="base", argv=argv, **kw)


@pytest.fixture
def node(data_dir, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    n = make_node(data_dir)
    yield n
    n.close()


def test_success_and_nothing_left(node):
    out = node.run_iteration(it("sh", "-c", "echo 42"))
    assert (out.state, out.exit_code, out.stdout) == (State.SUCCEEDED, 0, b"42\n")
    assert out.kept_logs is None and out.vm.startswith("tryfleet-")
    assert nothing_left(node)


def test_failure_keeps_console_log_and_domain_xml(node):
    out = node.run_iteration(it("sh", "-c", "exit 3"))
    assert (out.state, out.exit_code) == (State.FAILED, 3)
    assert (out.kept_logs / "console.log").read_bytes().startswith(b"fake console")
    assert "<domain" in (out.kept_logs / "domain.xml").read_text()
    assert json.loads((out.kept_logs / "details.json").read_text())["state"] == "FAILED"
    assert nothing_left(node)


def test_timeout_is_reported_and_the_vm_destroyed(node):
    out = node.run_iteration(it("sleep", "30", timeout_s=0.3))
    assert out.state is State.TIMED_OUT and out.duration_s < 10
    assert nothing_left(node)


def test_guest_crash_mid_command_is_an_infra_error(node):
    def crash_soon(stream, data):
        node.hv.crash(node.live()[0])

    out = node.run_iteration(it("sh", "-c", "echo started; sleep 30"), on_output=crash_soon)
    assert out.state is State.INFRA_ERROR and "guest" in out.error
    assert nothing_left(node)


def test_host_side_exception_still_destroys_the_vm(node):
    def explode(stream, data):
        raise RuntimeError("host bug")

    with pytest.raises(RuntimeError, match="host bug"):
        node.run_iteration(it("echo", "hi"), on_output=explode)
    assert nothing_left(node)


def test_cancel_stops_the_command(node):
    out = node.run_iteration(it("sleep", "30"), should_stop=lambda: True)
    assert out.state is State.CANCELLED
    assert nothing_left(node)


def test_files_in_and_out(node):
    # the fake runs commands on the host, in the guest root's /root: relative paths only
    out = node.run_iteration(it("sh", "-c", "tr a-z A-Z < in.txt > out.txt",
                                put=(("/root/in.txt", b"hello"),), get=("/root/out.txt",)))
    assert out.state is State.SUCCEEDED and dict(out.files) == {"/root/out.txt": b"HELLO"}


def test_missing_get_file_is_reported_not_fatal(node):
    out = node.run_iteration(it("true", get=("/root/never-written",)))
    assert out.state is State.SUCCEEDED and "could not fetch /root/never-written" in out.error


def test_start_failure_is_an_infra_error_with_nothing_left(data_dir, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    node = make_node(data_dir, fail_start=True)
    out = node.run_iteration(it("true"))
    assert out.state is State.INFRA_ERROR and "injected failure" in out.error
    assert nothing_left(node)
    node.close()


def test_boot_that_never_answers_times_out_as_infra_error(data_dir, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    node = make_node(data_dir, never_boot=True)
    try:
        with pytest.raises(GuestUnresponsive, match="did not boot") as err:
            node.acquire(SandboxSpec("base", boot_timeout_s=0.3))
        assert isinstance(err.value, InfrastructureError)
        assert nothing_left(node)
    finally:
        node.close()


@pytest.mark.parametrize("spec, message", [
    (SandboxSpec("base", cpus=0), "cpus"),
    (SandboxSpec("base", mem_mib=64), "mem_mib"),
    (SandboxSpec("base", disk_mib=1), "smaller than image"),
])
def test_impossible_sizes_are_bad_requests(node, spec, message):
    with pytest.raises(BadRequest, match=message):
        node.acquire(spec)
    assert nothing_left(node)


def test_reaper_removes_what_a_dead_owner_left_and_spares_the_living(data_dir, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    hv = FakeHypervisor()
    crashed = NodeAgent(NodeConfig(data_dir=data_dir), hv)
    sandbox = crashed.acquire(SandboxSpec("base"))
    living = NodeAgent(NodeConfig(data_dir=data_dir), hv)
    living_box = living.acquire(SandboxSpec("base"))
    # Make the crashed owner look like a process that died: a pid that cannot be alive.
    dead = subprocess.Popen(["true"])
    dead.wait()
    (crashed.owner.dir / OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "create_time": 1.0}))
    later = NodeAgent(NodeConfig(data_dir=data_dir), hv)
    assert later.reaped.domains == (sandbox.name,)
    assert crashed.owner.id in later.reaped.dirs
    assert not crashed.owner.dir.exists() and living.owner.dir.exists()
    assert hv.list_domains() == [living_box.name]
    living_box.destroy()
    for n in (living, later):
        n.close()


def test_overlay_is_a_valid_qcow2_on_the_golden_image(node):
    box = node.acquire(SandboxSpec("base", disk_mib=256))
    overlay = box.vm_dir / "disk.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["virtual-size"] == 256 * 1024 * 1024
    assert info["backing-filename"] == str(node.store.get("base").rootfs)
    assert subprocess.run(["qemu-img", "check", str(overlay)]).returncode == 0
    box.destroy()
    assert not overlay.exists() and nothing_left(node)


def test_close_destroys_live_sandboxes_and_the_owner_dir(data_dir, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    node = make_node(data_dir)
    node.acquire(SandboxSpec("base"))
    hv = node.hv
    node.close()
    assert hv.list_domains() == [] and not node.owner.dir.exists()


def test_an_image_with_a_recipe_but_no_build_is_built_on_demand(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    built = []

    def build(name):
        built.append(name)
        return make_image(tmp_path, name)

    node = NodeAgent(NodeConfig(data_dir=tmp_path), FakeHypervisor(), build_image=build)
    out = node.run_iteration(it("true"))
    assert out.state is State.SUCCEEDED and built == ["base"]
    node.run_iteration(it("true"))
    assert built == ["base"]  # built once
    node.close()


def test_a_guest_bigger_than_the_hosts_memory_is_refused_before_any_vm(data_dir):
    node = make_node(data_dir)
    try:
        host_mib = node.capacity().mem_mib
        with pytest.raises(BadRequest, match=f"{host_mib} MiB of memory in all"):
            node.acquire(SandboxSpec("base", mem_mib=host_mib + 1))
        assert node.hv.started == []
    finally:
        node.close()
