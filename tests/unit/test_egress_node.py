"""Egress on the node side without VMs: the policy's rules reach the node through /v1 (the
fake hypervisor records the NIC asked for), a VM granted egress is always booted and attached
to the node's proxy while it lives, every proxy event becomes an audit record before the proxy
acts (and an audit that fails refuses), and the guest agent's proxy variables."""

import socket

import pytest

from tests.unit.apifleet import api_fleet
from tests.waiting import until
from tryfleet.audit import Audit, AuditUnavailable, Filter
from tryfleet.gateway.keys import Scope
from tryfleet.images.guestagent import spawn
from tryfleet.nodeagent import NodeAgent, NodeConfig
from tryfleet.nodeagent.egress_node import AuditSink
from tryfleet.nodeagent.fake_hv import FakeHypervisor, make_fake_image
from tryfleet.nodeagent.node import PoolTarget
from tryfleet.nodeagent.reaper import reap, register_owner
from tryfleet.nodeagent.records import SandboxSpec
from tryfleet.scheduler.records import Iteration
from tryfleet.wire import EgressEvent, Ids, Pressure

RULES = ("allowed.test:80",)
POLICY = '[tenant.netco]\nnetwork = "egress"\negress = ["Allowed.Test:80"]\n'


@pytest.fixture
def node(tmp_path):
    make_fake_image(tmp_path, "base")
    n = NodeAgent(NodeConfig(data_dir=tmp_path, accel="tcg", warm_pool=True,
                             pool_targets=(PoolTarget("base"),)), FakeHypervisor())
    yield n
    n.close()


def test_a_vm_granted_egress_gets_a_nic_to_its_own_proxy_socket(node, tmp_path):
    until(lambda: node.pool.ready(node._key(SandboxSpec("base"))), 30)  # pooled: no NIC
    box = node.acquire(SandboxSpec("base", egress=RULES), ids=Ids(tenant="netco"))
    sock = tmp_path / "egress" / f"{box.name}.sock"
    assert node.hv.nics == {box.name: sock}
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))  # the proxy listens for it
    box.destroy()
    assert not sock.exists() and node.egress._proxy.attached() == []


def test_a_vm_without_egress_gets_no_nic(node):
    box = node.acquire(SandboxSpec("base"))
    assert node.hv.nics == {}
    box.destroy()


def test_a_vm_granted_egress_is_booted_even_when_a_pooled_one_is_ready(node):
    key = node._key(SandboxSpec("base"))
    assert node.pool.wait_ready(key, 1, 30)
    box = node.acquire(SandboxSpec("base", egress=RULES))
    assert box.origin == "boot" and node.pool.ready(key) == 1
    box.destroy()


def event(kind="decision", decision="allow", **kw):
    return EgressEvent("tryfleet-ab12cd34-1", Ids(tenant="netco", iteration="it-1", attempt=2,
                                                  trace_id="t-1", request_id="req_1"),
                       kind, "allowed.test", 80, "198.51.100.2", decision, "allowlisted", **kw)


def test_each_proxy_event_is_an_audit_record_with_its_iteration(tmp_path):
    sink = AuditSink(tmp_path, "h1")
    sink(event())
    sink(event("end", bytes_up=10, bytes_down=99, duration_s=0.5))
    sink.close()
    got = [r.to_json() for r in Audit(tmp_path).select(Filter(action="egress"))]
    assert [(r["action"], r["iteration"], r["tenant"], r["request_id"], r["outcome"])
            for r in got] == [("egress.decision", "it-1", "netco", "req_1", "allow"),
                              ("egress.end", "it-1", "netco", "req_1", "allow")]
    assert got[0]["details"]["destination"] == "allowed.test:80"
    assert got[0]["details"]["attempt"] == 2 and got[1]["details"]["bytes_down"] == 99


def test_a_sandboxs_events_carry_its_sandbox_id(tmp_path):
    sink = AuditSink(tmp_path, "h1")
    sink.own("tryfleet-ab12cd34-1", "sbx-1")
    sink(event(decision="deny"))
    sink.close()
    (got,) = Audit(tmp_path).select(Filter(action="egress.decision"))
    assert got.sandbox == "sbx-1" and got.outcome == "deny"


def test_an_event_that_cannot_be_audited_raises_so_the_proxy_refuses(tmp_path):
    class Down:
        def record(self, *a, **kw):
            raise AuditUnavailable("disk gone")

    sink = AuditSink(tmp_path, "h1", open_audit=lambda _dir: Down())
    with pytest.raises(AuditUnavailable):
        sink(event())


def test_the_guest_agent_sets_the_proxy_for_every_command_and_the_caller_wins():
    base = spawn.egress_env("console=ttyS0 tryfleet.egress=10.0.2.100:3128 quiet")
    assert base["HTTP_PROXY"] == base["https_proxy"] == "http://10.0.2.100:3128"
    assert base["NO_PROXY"] == "localhost,127.0.0.1"
    got = spawn.parse({"argv": ["true"], "env": {"HTTP_PROXY": "mine"}}, "/", base)
    assert got.env["HTTP_PROXY"] == "mine" and got.env["http_proxy"] == "http://10.0.2.100:3128"


@pytest.mark.parametrize("cmdline", ["console=ttyS0", "tryfleet.egress=evil;rm:1",
                                     "tryfleet.egress=10.0.2.100"])
def test_the_guest_agent_sets_no_proxy_without_a_well_formed_egress_argument(cmdline):
    assert spawn.egress_env(cmdline) == {}


def test_an_iteration_keeps_its_egress_rules_through_the_ledger():
    it = Iteration.from_wire({**Iteration("base", ["true"], egress=RULES).to_wire()})
    assert it.egress == RULES and it.to_spec().egress == RULES
    assert "egress" not in Iteration("base", ["true"]).to_wire()


def test_the_tenants_policy_gives_its_sandboxes_their_rules(tmp_path):
    with api_fleet(tmp_path) as api:
        (api.data_dir / "policy.toml").write_text(POLICY)
        node = api.fleet.node_actor.svc.node
        node.pressure = Pressure  # this busy machine's own pressure is not under test
        hv = node.hv
        r = api.post("/v1/sandboxes", json={}, headers=api.key("netco"))
        assert r.status_code == 201 and len(hv.nics) == 1, r.text
        r = api.post("/v1/sandboxes", json={}, headers=api.key("plainco"))
        assert r.status_code == 201 and len(hv.nics) == 1, r.text


def test_the_tenants_policy_gives_its_iterations_their_rules(tmp_path):
    with api_fleet(tmp_path) as api:
        (api.data_dir / "policy.toml").write_text(POLICY)
        api.fleet.node_actor.svc.node.pressure = Pressure
        ledger = api.fleet.scheduler.ledger
        for tenant in ("netco", "plainco"):
            r = api.post("/v1/iterations", headers=api.key(tenant, Scope.BATCH),
                         json={"id": "it-1", "image": "base", "command": ["true"]})
            assert r.status_code == 201, r.text
        assert ledger.get_row("it-1", "netco").iteration.egress == RULES
        assert ledger.get_row("it-1", "plainco").iteration.egress == ()


def test_a_request_cannot_grant_itself_egress(tmp_path):
    with api_fleet(tmp_path) as api:
        r = api.post("/v1/iterations", headers=api.key("plainco", Scope.BATCH), json={
            "image": "base", "command": ["true"], "egress": ["evil.test:443"]})
        assert r.status_code == 422, r.text


def test_the_reaper_removes_the_proxy_sockets_of_owners_that_are_gone(tmp_path):
    living = register_owner(tmp_path / "run")
    (tmp_path / "egress").mkdir()
    dead_sock = tmp_path / "egress" / "tryfleet-0dead0ff-3.sock"
    live_sock = tmp_path / "egress" / f"tryfleet-{living.id}-1.sock"
    for path in (dead_sock, live_sock):
        path.touch()
    reap(FakeHypervisor(), tmp_path / "run")
    assert not dead_sock.exists() and live_sock.exists()


def test_an_e2b_sandbox_of_the_tenant_gets_its_rules_too(tmp_path):
    with api_fleet(tmp_path) as api:
        (api.data_dir / "policy.toml").write_text(POLICY)
        node = api.fleet.node_actor.svc.node
        node.pressure = Pressure
        key = api.key("netco")["Authorization"].removeprefix("Bearer ")
        r = api.post("/v2/sandboxes", json={"templateID": "base"}, headers={"X-API-Key": key})
        assert r.status_code == 201 and len(node.hv.nics) == 1, r.text
