"""The network of a guest granted egress, without a VM: its domain XML (one NIC, on the tap,
and the proxy's address on the kernel command line; none at all without egress), and the
namespace, relay and tap of an owner that died, removed by the reaper. The latter makes real
namespaces and taps (root, iproute2, socat), named after an owner id no live agent has."""

import os
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tryfleet.nodeagent.guestnet import GuestNet, reap_networks
from tryfleet.nodeagent.hypervisor import DomainSpec
from tryfleet.nodeagent.libvirt_hv import domain_xml


def spec(**kw):
    return DomainSpec("tryfleet-0badf00d-7", 1, 256, Path("/k"), Path("/i"), None, None,
                      Path("/c"), **kw)


def test_a_guest_granted_egress_has_one_nic_on_its_tap_and_knows_its_proxy():
    root = ET.fromstring(domain_xml(spec(egress_socket=Path("/d/e.sock")), tap="tf0badf00d7"))
    (nic,) = root.iter("interface")
    assert nic.get("type") == "ethernet" and nic.find("target").get("dev") == "tf0badf00d7"
    assert nic.find("target").get("managed") == "no"
    assert "tryfleet.egress=10.0.2.100:3128" in root.findtext("os/cmdline")


def test_a_guest_without_egress_has_no_nic_at_all():
    root = ET.fromstring(domain_xml(spec()))
    assert list(root.iter("interface")) == [] and "egress" not in root.findtext("os/cmdline")


def test_a_vm_named_otherwise_is_not_granted_egress():
    with pytest.raises(Exception, match="cannot be granted egress"):
        GuestNet.of("tryfleet-snap-ab12", Path("/d/e.sock"))


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip")
                                or not shutil.which("socat"), reason="needs root, ip, socat")


def names(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True).stdout


@needs_root
def test_the_network_of_a_dead_owner_is_reaped_and_a_living_ones_kept(tmp_path):
    dead, alive = GuestNet("0dead0ff", 1, tmp_path / "d.sock"), \
        GuestNet("0a11fe00", 1, tmp_path / "a.sock")
    try:
        for net in (dead, alive):
            net.make()
            net.isolate()  # the relay listens in the namespace (no VM on the tap here)
        relay = dead.relay
        dead.relay = None  # as after the agent died: nobody holds it
        removed = reap_networks(lambda owner: owner == "0dead0ff")
        assert removed == [dead.netns]
        assert dead.netns not in names("netns", "list") and alive.netns in names("netns", "list")
        assert dead.tap not in names("link") and relay.wait(10) is not None
    finally:
        alive.remove()
        dead.remove()


@needs_root
def test_the_relay_hands_a_connection_in_the_namespace_to_the_proxy_socket(tmp_path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "p.sock"))
    server.listen()
    net = GuestNet("0feed000", 2, tmp_path / "p.sock")
    try:
        net.make()
        net.isolate()
        client = subprocess.Popen(["ip", "netns", "exec", net.netns, "python3", "-c",
                                   "import socket; s = socket.create_connection(('10.0.2.100',"
                                   " 3128), 5); s.sendall(b'hi'); print(s.recv(2).decode())"],
                                  stdout=subprocess.PIPE, text=True)
        conn, _ = server.accept()
        assert conn.recv(2) == b"hi"
        conn.sendall(b"ok")
        assert client.communicate(timeout=10)[0].strip() == "ok"
        conn.close()
    finally:
        net.remove()
        server.close()
    assert net.netns not in names("netns", "list")
