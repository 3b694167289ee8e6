"""Warm pools and snapshot restore on the fake hypervisor: what is handed out, from where, and
that every iteration still gets a machine nobody used before."""

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.unit.builders import make_image
from tryfleet.nodeagent import BadRequest, IterationSpec, NodeAgent, NodeConfig, SandboxSpec, State
from tryfleet.nodeagent.errors import Cancelled
from tryfleet.nodeagent.fake_hv import FakeHypervisor
from tryfleet.nodeagent.hypervisor import RestoreSpec
from tryfleet.nodeagent.libvirt_hv import restore_xml
from tryfleet.nodeagent.node import PoolTarget


@pytest.fixture
def data_dir(tmp_path):
    make_image(tmp_path, "base")
    return tmp_path


def make_node(data_dir, **config):
    cfg = NodeConfig(data_dir=data_dir, accel="tcg", **config)
    return NodeAgent(cfg, FakeHypervisor())


SPEC = SandboxSpec("base", 1, 512, None)


def hold_refills(pool):
    """From now on the pool's refill worker prepares nothing: its next fill waits until the
    pool is closed (then it is cancelled as a fill is). What the pool holds stays; what a
    test acquires next comes from there, a saved guest or a boot, and nothing races it."""

    def held(key, should_stop):
        while not should_stop():  # the pool's abort signal is a flag, not an event: poll it
            time.sleep(0.01)
        raise Cancelled("the pool closed while its refills were held")

    pool._fill = held


def test_pool_hands_out_ready_vms_and_refills(data_dir):
    node = make_node(data_dir, warm_pool=True, pool_targets=(PoolTarget("base", ready=2),),
                     restore=False)
    try:
        key = node._key(SPEC)
        assert node.pool.wait_ready(key, 2, timeout_s=30)
        box = node.acquire(SPEC)
        assert box.origin == "pool"
        box.destroy()
        assert node.pool.wait_ready(key, 2, timeout_s=30)  # refilled in the background
    finally:
        node.close()
    assert node.hv.list_domains() == []


def test_a_pool_target_of_an_unknown_image_is_left_out_with_a_warning(data_dir, caplog):
    node = make_node(data_dir, warm_pool=True, restore=False,
                     pool_targets=(PoolTarget("nosuch", ready=1), PoolTarget("base", ready=1)))
    try:
        assert "nosuch" in caplog.text and "left out" in caplog.text
        assert node.pool.wait_ready(node._key(SPEC), 1, timeout_s=30)  # the others still fill
    finally:
        node.close()


def test_every_iteration_gets_a_fresh_machine(data_dir):
    node = make_node(data_dir, warm_pool=True, pool_targets=(PoolTarget("base", ready=2),))
    try:
        key = node._key(SPEC)
        for n in range(3):
            assert node.pool.wait_ready(key, 1, timeout_s=30)
            out = node.run_iteration(IterationSpec(
                image="base", argv=("sh", "-c", f"ls; echo {n} > left-behind")))
            assert out.state is State.SUCCEEDED
            assert b"left-behind" not in out.stdout  # nothing of the previous iteration
    finally:
        node.close()


def test_misses_restore_from_a_saved_guest_instead_of_booting(data_dir):
    node = make_node(data_dir, warm_pool=True, pool_targets=(PoolTarget("base", ready=1),))
    try:
        key = node._key(SPEC)
        assert node.pool.wait_ready(key, 1, timeout_s=30)
        # the pool's one VM: a guest booted once and saved (slot 0), then restored from it
        assert (len(node.hv.saved), len(node.hv.restored)) == (1, 1)
        hold_refills(node.pool)
        first = node.acquire(SPEC)
        assert first.origin == "pool"
        second = node.acquire(SPEC)  # a miss, and slot 0 is first's until it is destroyed
        assert second.origin == "boot"
        first.destroy()
        third = node.acquire(SPEC)  # a miss again, and slot 0 is free
        assert third.origin == "restore" and third.name == first.name
        assert (len(node.hv.saved), len(node.hv.restored)) == (1, 2)
        second.destroy()
        third.destroy()
    finally:
        node.close()
    assert node.hv.list_domains() == []


def test_a_slot_serves_one_vm_at_a_time(data_dir):
    node = make_node(data_dir, restore=True)
    key = node._key(SPEC)
    node._make_slot(key, node.image("base"))
    try:
        a = node.acquire(SPEC)
        b = node.acquire(SPEC)
        assert (a.origin, b.origin) == ("restore", "boot")
        a.destroy()
        c = node.acquire(SPEC)
        assert c.origin == "restore" and c.name == a.name
        b.destroy()
        c.destroy()
    finally:
        node.close()


def test_the_images_warm_up_runs_once_before_a_guest_is_saved(tmp_path, caplog):
    # the fake guest's commands run on this host: the warm-up leaves a line in a host file
    ran = tmp_path / "warm.log"
    make_image(tmp_path, "base", warm=("sh", "-c", f"echo warmed >> {ran}"))
    make_image(tmp_path, "cold", warm=("sh", "-c", "echo no such module >&2; exit 1"))
    node = make_node(tmp_path, restore=True)
    try:
        node._make_slot(node._key(SPEC), node.image("base"))
        assert ran.read_text() == "warmed\n"
        box = node.acquire(SPEC)
        assert box.origin == "restore" and ran.read_text() == "warmed\n"  # not on restore
        box.destroy()
        cold = SandboxSpec("cold", 1, 512, None)
        node._make_slot(node._key(cold), node.image("cold"))  # a failed warm-up: saved anyway
        assert "warm-up" in caplog.text and "no such module" in caplog.text
        assert node.acquire(cold).origin == "restore"
    finally:
        node.close()


def test_two_agents_on_one_host_never_restore_the_same_slot(data_dir):
    first, second = make_node(data_dir, restore=True), make_node(data_dir, restore=True)
    try:
        first._make_slot(first._key(SPEC), first.image("base"))
        a = first.acquire(SPEC)
        b = second.acquire(SPEC)  # the only slot is in use by the other agent: booted
        assert (a.origin, b.origin) == ("restore", "boot")
        a.destroy()
        c = second.acquire(SPEC)
        assert c.origin == "restore"
        b.destroy()
        c.destroy()
    finally:
        first.close()
        second.close()


def test_saved_guests_of_builds_no_longer_current_are_removed(data_dir):
    node = make_node(data_dir, restore=True)
    node._make_slot(node._key(SPEC), node.image("base"))
    node.close()
    old = data_dir / "snapshots" / "0123456789ab-1c-512m-0d-tcg" / "0"
    old.mkdir(parents=True)
    (old / "state.save").write_text("a guest of a build since replaced")
    again = make_node(data_dir, restore=True)
    try:
        assert again.acquire(SPEC).origin == "restore"  # the current build's slot stays
        assert not old.parent.exists()
    finally:
        again.close()


def test_a_slot_that_cannot_be_restored_is_dropped_and_the_vm_booted(data_dir):
    node = make_node(data_dir, restore=True)
    key = node._key(SPEC)
    node._make_slot(key, node.image("base"))
    slot_dirs = list((data_dir / "snapshots").rglob("state.save"))
    slot_dirs[0].write_text("damaged")
    box = node.acquire(SPEC)
    try:
        assert box.origin == "boot"
        assert not list((data_dir / "snapshots").rglob("state.save"))
    finally:
        box.destroy()
        node.close()


def test_pool_stays_within_its_memory_budget(data_dir):
    node = make_node(data_dir, warm_pool=True, restore=False, pool_budget_mib=600,
                     pool_targets=(PoolTarget("base", ready=3),))
    try:
        key = node._key(SPEC)
        assert node.pool.wait_ready(key, 1, timeout_s=30)
        assert not node.pool.wait_ready(key, 2, timeout_s=1.5)
        assert node.pool.idle_mem_mib() == 512
    finally:
        node.close()


def test_kill_switch_empties_the_pool_until_work_comes_back(data_dir):
    node = make_node(data_dir, warm_pool=True, restore=False,
                     pool_targets=(PoolTarget("base", ready=1),))
    try:
        key = node._key(SPEC)
        assert node.pool.wait_ready(key, 1, timeout_s=30)
        node.destroy_all()
        assert node.hv.list_domains() == []
        assert not node.pool.wait_ready(key, 1, timeout_s=1.5)
        node.acquire(SPEC).destroy()  # work again: the pool comes back
        assert node.pool.wait_ready(key, 1, timeout_s=30)
    finally:
        node.close()


def test_demand_sizes_the_pool_without_targets(data_dir):
    node = make_node(data_dir, warm_pool=True, restore=False, pool_max_per_key=2)
    try:
        key = node._key(SPEC)
        assert node.pool.ready(key) == 0
        for _ in range(3):
            node.acquire(SPEC).destroy()
        assert node.pool.wanted(key) == 2
        assert node.pool.wait_ready(key, 2, timeout_s=30)
    finally:
        node.close()


@pytest.mark.parametrize("text,want", [
    ("base=2", PoolTarget("base", 1, 512, None, 2)),
    ("base:2x1024=1", PoolTarget("base", 2, 1024, None, 1)),
])
def test_pool_target_parses(text, want):
    assert PoolTarget.parse(text) == want


@pytest.mark.parametrize("text", ["=2", "base:2=1", "base=x", "base:axb=1"])
def test_bad_pool_target_says_how_to_write_it(text):
    with pytest.raises(BadRequest, match="IMAGE"):
        PoolTarget.parse(text)


SAVED = """<domain type='qemu'><name>tryfleet-snap-x-0</name><uuid>u</uuid>
<metadata><tf:vm xmlns:tf='https://tryfleet.dev/xmlns/vm/1'><tf:owner>old</tf:owner></tf:vm></metadata>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/slot/disk.qcow2'/><backingStore type='file'><format type='qcow2'/>
<source file='/golden.qcow2'/><backingStore/></backingStore><target dev='vda' bus='virtio'/></disk>
<serial type='file'><source path='/slot/console.log'/><target port='0'/></serial>
<channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/x'/>
<target type='virtio' name='org.tryfleet.agent.0'/></channel>
</devices></domain>"""


def test_restore_xml_moves_the_disk_onto_a_fresh_overlay_with_the_whole_chain():
    xml, name = restore_xml(SAVED, RestoreSpec(
        disk=Path("/vm/disk.qcow2"), chain=(Path("/slot/disk.qcow2"), Path("/golden.qcow2")),
        console_log=Path("/vm/console.log"), metadata={"owner": "new"}))
    root = ET.fromstring(xml)
    assert name == "tryfleet-snap-x-0"
    disk = root.find("devices/disk")
    chain = [disk.find("source").get("file")]
    store = disk.find("backingStore")
    while store is not None and store.find("source") is not None:
        chain.append(store.find("source").get("file"))
        store = store.find("backingStore")
    assert chain == ["/vm/disk.qcow2", "/slot/disk.qcow2", "/golden.qcow2"]
    assert root.find("devices/serial/source").get("path") == "/vm/console.log"
    assert root.find("devices/channel/source").get("path") is None
    assert "<tf:owner>new</tf:owner>" in xml and ">old<" not in xml
