"""Guests granted egress that turn hostile, on real VMs through a real fleet: the tricks a
guest plays on the allowlist, a flood of connections to the proxy, an oversized request head,
and raw packets past the proxy. test_egress_vm.py proves the allowlist itself (what is
fetched, what is refused, every host port closed, the audit); this module only what a guest
does on purpose to get around it or to wear the host down. Each attack is contained, refused
with a clear answer, leaves no VM, folder or network namespace behind, and the host side
survives it (hostile.Hostile.survived). A server in a network namespace of this test's own
(testnet.py) stands for the internet: no traffic leaves this host."""

import json
import subprocess

import pytest

from .hostile import Hostile
from .test_egress_vm import own_address
from .testnet import served_network
from .vmfleet import vm_fleet

pytestmark = pytest.mark.vm
HOST = "hostilenet"
POLICY = """
[tenant.netco]
network = "egress"
egress = ["allowed.test:80", "private.test:80"]
"""
PROXY_CONNECTIONS_PER_VM = 32  # EgressProxy's max_connections_per_vm
RELAYED_PER_VM = 64  # guestnet.MAX_RELAYED: socat children in a guest's namespace


@pytest.fixture(scope="module")
def fleet(data_dir):
    with served_network() as net, vm_fleet(data_dir, HOST, POLICY) as v:
        (v.data / "egress-hosts").write_text(f"{net.address} allowed.test other.test\n"
                                             "10.1.2.3 private.test\n")
        h = Hostile.start(v, tenant="netco")
        h.page = net.page
        h.server = net.address
        yield h
        h.close()


def fetch(fleet, sid, url, *curl_args):
    """(HTTP status, body) of `curl url` in the sandbox, through its HTTP_PROXY."""
    r = fleet.exec(sid, f"curl -sS --max-time 20 -w '\\n%{{http_code}}' {' '.join(curl_args)} "
                        f"'{url}'")
    assert r.status_code == 200, r.text
    body, _, code = r.json()["stdout"].rpartition("\n")
    return code, body


def test_tricks_on_the_allowlist_are_refused_and_the_allowed_name_still_works(fleet):
    tricks = [
        f"http://{fleet.server}/",  # the allowed server by its address: rules name hosts
        "http://allowed.test@other.test/",  # userinfo that looks like the allowed name
        "http://allowed.test:8080/",  # the allowed name on another port
        "http://allowed.test.other.test/",  # a name that starts with the allowed one
        "http://private.test/",  # allowed, but resolves to a private address
        "http://127.1/", "http://[::1]:8470/", "http://0x7f000001/",  # loopback, spelt oddly
        f"http://{own_address()}:8470/",
    ]
    with fleet.sandbox() as sid:
        # --noproxy '': through the proxy even where NO_PROXY would keep curl in the guest
        said = {url: fetch(fleet, sid, url, "--noproxy ''") for url in tricks}
        refused = {url: code for url, (code, _) in said.items() if code != "403"}
        assert refused == {}, said  # each answered 403 by the proxy, none passed
        assert fetch(fleet, sid, "http://allowed.test/") == ("200", fleet.page)
    fleet.survived()


FLOOD = """
import json, select, socket, sys, time
socks = []
for _ in range(int(sys.argv[1])):  # all at once, none waiting for the one before
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("10.0.2.100", 3128))
    socks.append(s)
deadline, pending = time.monotonic() + 10, set(socks)
while pending and time.monotonic() < deadline:
    _, ready, _ = select.select([], list(pending), [], 1)
    pending -= set(ready)
held = sum(1 for s in socks if s not in pending and s.getsockopt(socket.SOL_SOCKET,
                                                                  socket.SO_ERROR) == 0)
with open("/root/flood.json", "w") as f:
    json.dump({"held": held, "tried": len(socks)}, f)
time.sleep(600)
"""
FLOOD_CONNECTIONS = 200


def test_a_connection_flood_costs_the_host_a_bound_and_a_neighbour_still_fetches(fleet):
    with fleet.sandbox() as flooder:
        fleet.put(flooder, "/root/flood.py", FLOOD.encode())
        r = fleet.exec(flooder, f"nohup python3 /root/flood.py {FLOOD_CONNECTIONS} "
                                ">/dev/null 2>&1 & until [ -s /root/flood.json ]; do sleep "
                                "0.2; done; cat /root/flood.json", timeout_s=300)
        assert r.status_code == 200, r.text
        flood = json.loads(r.json()["stdout"])
        seq = fleet.vm_of(flooder).rsplit("-", 1)[1]
        (netns,) = [n for n in fleet.networks() if n.endswith("-" + seq)]
        # However many the guest opened, the host runs a bounded number of relays for it.
        assert flood["tried"] == FLOOD_CONNECTIONS, flood
        assert pids_in(netns) <= 1 + RELAYED_PER_VM, pids_in(netns)
        assert fetch(fleet, fleet.neighbour, "http://allowed.test/")[0] == "200"
    fleet.survived()


def pids_in(netns: str) -> int:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                         check=True).stdout
    return len(out.split())


OVERSIZED = """
import socket
s = socket.create_connection(("10.0.2.100", 3128), timeout=20)
try:
    s.sendall(b"GET http://allowed.test/ HTTP/1.1\\r\\nHost: allowed.test\\r\\nX-Big: " +
              b"a" * (4 << 20) + b"\\r\\n\\r\\n")
except OSError as e:
    print("send:", type(e).__name__)
answer = b""
try:
    while chunk := s.recv(65536):
        answer += chunk
except OSError as e:
    print("recv:", type(e).__name__)
print(answer.split(b"\\r\\n", 1)[0].decode(errors="replace") or "closed")
"""


def test_an_oversized_request_head_is_cut_off_not_buffered(fleet):
    with fleet.sandbox() as sid:
        fleet.put(sid, "/root/big.py", OVERSIZED.encode())
        r = fleet.exec(sid, "python3 /root/big.py", timeout_s=120)
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
        last = r.json()["stdout"].strip().splitlines()[-1]
        assert last.startswith("HTTP/1.1 4") or last == "closed", r.json()["stdout"]
        assert fetch(fleet, sid, "http://allowed.test/")[0] == "200"
    fleet.survived()


RAW = """
import json, socket, subprocess
out = {}
# Re-address the NIC as the proxy's neighbour and the host's test network, then go direct.
for args in (["addr", "add", "198.51.100.9/24", "dev", "eth0"],
             ["route", "add", "default", "via", "10.0.2.2"]):
    try:
        subprocess.run(["ip", *args], capture_output=True)
    except OSError:  # no `ip` in the image: python's own sockets still try
        pass
for host, port in (("198.51.100.2", 80), ("198.51.100.1", 22), ("10.0.2.2", 3128),
                   ("10.0.2.2", 53)):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        out[f"{host}:{port}"] = "open"
    except OSError as e:
        out[f"{host}:{port}"] = type(e).__name__
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x04test\\x00\\x00\\x01"
         b"\\x00\\x01", ("10.0.2.2", 53))
try:
    u.recvfrom(512)
    out["dns 10.0.2.2:53"] = "answered"
except OSError as e:
    out["dns 10.0.2.2:53"] = type(e).__name__
print(json.dumps(out))
"""


def test_a_guest_that_readdresses_its_nic_still_reaches_nothing_but_the_proxy(fleet):
    with fleet.sandbox() as sid:
        fleet.put(sid, "/root/raw.py", RAW.encode())
        r = fleet.exec(sid, "python3 /root/raw.py", timeout_s=120)
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
        got = json.loads(r.json()["stdout"].strip().splitlines()[-1])
        assert "open" not in got.values() and got["dns 10.0.2.2:53"] != "answered", got
    fleet.survived()
