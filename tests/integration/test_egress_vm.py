"""Egress by allowlist on real VMs, through the real gateway, scheduler and node agent: a
tenant whose policy grants `allowed.test:80` fetches from a server in a network namespace of
this test's own (testnet.py) with curl and python's urllib, through the node's proxy; every
other destination is refused, by the proxy (a 403 that says why) and, for a guest that ignores
HTTP_PROXY, by having no route anywhere; a tenant without a network policy has no NIC at all;
each decision is in the audit trail with the sandbox or iteration it belongs to. Names are
mapped in `<data>/egress-hosts`: no DNS query, and no traffic leaves this host."""

import ipaddress
import json
import re
import subprocess

import httpx
import pytest

from tests.waiting import until
from tryfleet.audit import Filter, select
from tryfleet.gateway.keys import Scope

from .probes import CONNECT_PROBE
from .testnet import served_network
from .vmfleet import vm_fleet

pytestmark = pytest.mark.vm

HOST = "egresstest"
GUEST = {"image": "base", "cpus": 1, "mem_mib": 256, "timeout_s": 900}
POLICY = """
[tenant.netco]
network = "egress"
egress = ["allowed.test:80", "private.test:80", "meta.test:80"]
"""
PROXY = ("10.0.2.100", 3128)


def own_address() -> str:
    """This host's own address (in 192.0.2.0/24 on the project's machines)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    for found in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
        if not ipaddress.ip_address(found).is_loopback and not found.startswith("198.51.100."):
            return found
    pytest.skip("this host has no address but loopback")


class Fleet:
    def __init__(self, v, net) -> None:
        self.v, self.net = v, net
        self.http = httpx.Client(base_url=v.url, timeout=300)

    def key(self, tenant: str, *scopes: Scope) -> dict[str, str]:
        _, token = self.v.keys.create(tenant, frozenset(scopes or {Scope.SANDBOX}),
                                      created_by="test")
        return {"Authorization": f"Bearer {token}"}

    def open(self, headers: dict[str, str]) -> str:
        r = self.http.post("/v1/sandboxes", json=GUEST, headers=headers)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def run(self, headers: dict[str, str], sid: str, argv: list[str],
            env: dict[str, str] | None = None) -> dict:
        r = self.http.post(f"/v1/sandboxes/{sid}/exec", headers=headers,
                           json={"argv": argv, "env": env or {}, "timeout_s": 120})
        assert r.status_code == 200, r.text
        return r.json()

    def audit(self, **filters: str) -> list[dict]:
        """The audit records that match, as the API gives them (details an object)."""
        return [r.to_json() for r in select(self.v.data / "audit.db",
                                            Filter(limit=1000, **filters))]


@pytest.fixture(scope="module")
def fleet(data_dir):
    with served_network() as net, vm_fleet(data_dir, HOST, POLICY) as v:
        (v.data / "egress-hosts").write_text(
            f"{net.address} allowed.test other.test\n"
            "10.1.2.3 private.test\n169.254.169.254 meta.test\n")
        f = Fleet(v, net)
        yield f
        f.http.close()


@pytest.fixture(scope="module")
def netco(fleet):
    return fleet.key("netco", Scope.SANDBOX, Scope.BATCH)


@pytest.fixture(scope="module")
def box(fleet, netco):
    return fleet.open(netco)


def curl(*args: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "20", *args]


def test_curl_fetches_from_an_allowed_name(fleet, netco, box):
    got = fleet.run(netco, box, curl("http://allowed.test/"))
    assert got["exit_code"] == 0 and got["stdout"] == fleet.net.page, got


def test_python_urllib_fetches_from_an_allowed_name(fleet, netco, box):
    got = fleet.run(netco, box, ["python3", "-c", "import urllib.request; print(urllib."
                                 "request.urlopen('http://allowed.test/', timeout=20)"
                                 ".read().decode(), end='')"])
    assert got["exit_code"] == 0 and got["stdout"] == fleet.net.page, got


def test_a_name_off_the_allowlist_is_refused_by_the_proxy_with_a_clear_message(
        fleet, netco, box):
    got = fleet.run(netco, box, curl("-w", "\n%{http_code}", "http://other.test/"))
    body, _, code = got["stdout"].rpartition("\n")
    assert code == "403" and "other.test" in body and "allow" in body.lower(), got


def test_an_allowed_name_that_resolves_to_a_private_address_is_refused(fleet, netco, box):
    got = fleet.run(netco, box, curl("-o", "/dev/null", "-w", "%{http_code}",
                                     "http://private.test/"))
    assert got["stdout"] == "403", got


def test_the_metadata_address_is_refused_through_the_proxy(fleet, netco, box):
    by_name = fleet.run(netco, box, curl("-o", "/dev/null", "-w", "%{http_code}",
                                         "http://meta.test/"))
    by_address = fleet.run(netco, box, curl("-o", "/dev/null", "-w", "%{http_code}",
                                            "http://169.254.169.254/"))
    assert by_name["stdout"] == "403" and by_address["stdout"] == "403", (by_name, by_address)


def test_the_hosts_own_address_is_refused_through_the_proxy(fleet, netco, box):
    got = fleet.run(netco, box, curl("-o", "/dev/null", "-w", "%{http_code}",
                                     f"http://{own_address()}:8470/"))
    assert got["stdout"] == "403", got


def probe(fleet, headers, sid, targets) -> dict[str, str]:
    got = fleet.run(headers, sid, ["python3", "-c", CONNECT_PROBE, json.dumps(targets), "3"])
    assert got["exit_code"] == 0, got
    return json.loads(got["stdout"])


def test_the_guest_reaches_no_host_port_but_the_proxys(fleet, netco, box):
    import ray

    gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    api_port = httpx.URL(fleet.v.url).port
    own = own_address()
    targets = [("10.0.2.2", p) for p in (22, 6379, 8470, gcs_port, api_port)]
    targets += [(own, p) for p in (22, 8470, gcs_port)]
    targets += [("169.254.169.254", 80), (fleet.net.address, 80), PROXY]
    got = probe(fleet, netco, box, targets)
    assert got.pop(f"{PROXY[0]}:{PROXY[1]}") == "open"  # the probe sees an open port
    assert "open" not in got.values(), got


def test_a_tenant_without_a_network_policy_has_only_lo(fleet):
    plain = fleet.key("plainco")
    sid = fleet.open(plain)
    try:
        got = fleet.run(plain, sid, ["sh", "-c", "ls /sys/class/net; cat /proc/net/dev"])
        env = fleet.run(plain, sid, ["sh", "-c", "env | grep -i _proxy || true"])
    finally:
        fleet.http.delete(f"/v1/sandboxes/{sid}", headers=plain)
    assert got["stdout"].split("\n")[0] == "lo" and "eth0" not in got["stdout"], got
    assert env["stdout"] == "", env


def test_each_decision_is_audited_with_its_sandbox(fleet, netco, box):
    fleet.run(netco, box, curl("-o", "/dev/null", "http://allowed.test/"))
    fleet.run(netco, box, curl("-o", "/dev/null", "http://other.test/"))
    decisions = fleet.audit(action="egress.decision", sandbox=box)
    seen = {(r["details"]["destination"], r["details"]["decision"]) for r in decisions}
    assert {("allowed.test:80", "allow"), ("other.test:80", "deny")} <= seen, seen
    assert all(r["tenant"] == "netco" and r["request_id"] for r in decisions), decisions
    ends = until(lambda: fleet.audit(action="egress.end", sandbox=box), 30)
    assert ends[0]["details"]["bytes_down"] > 0, ends


def test_an_iteration_fetches_and_its_decisions_carry_its_id(fleet, netco):
    r = fleet.http.post("/v1/iterations", headers=netco, json={
        "id": "egress-it-1", "image": "base", "mem_mib": 256, "timeout_s": 600,
        "command": curl("http://allowed.test/")})
    assert r.status_code == 201, r.text

    def ended():
        got = fleet.http.get("/v1/iterations/egress-it-1", headers=netco).json()
        return got if got["state"] not in ("QUEUED", "RUNNING") else None

    done = until(ended, 600)
    assert done["state"] == "SUCCEEDED" and done["stdout"] == fleet.net.page, done
    audited = fleet.audit(action="egress", iteration="egress-it-1")
    assert [(r["details"]["destination"], r["outcome"], r["details"]["attempt"])
            for r in audited if r["action"] == "egress.decision"] == \
        [("allowed.test:80", "allow", 1)], audited


def test_a_request_cannot_grant_itself_egress(fleet, netco):
    r = fleet.http.post("/v1/iterations", headers=netco, json={
        "image": "base", "command": ["true"], "egress": ["evil.test:443"]})
    assert r.status_code == 422, r.text
