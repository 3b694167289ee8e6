"""Kill switches through the real scheduler over simulated hosts that hold sandboxes (no VM, no
Ray): a freeze refuses new work and holds across a restart of the scheduler until lifted, a
kill closes sandboxes on their host, unknown targets are not found."""

import pytest

from tests.waiting import until
from tryfleet.errors import Frozen, NotFound
from tryfleet.nodeagent.simhost import SimHostSpec

from .test_scheduler_sandboxes import BoxHosts, Fleet

BY = "key:adm cli:ana@box"
ONE = [{"image": "base", "command": ["true"], "id": "i-1"}]


@pytest.fixture
def hosts():
    return BoxHosts([SimHostSpec("h1", cpus=2, mem_mib=8192)])


@pytest.fixture
def fleet(tmp_path, hosts):
    f = Fleet(tmp_path, hosts)
    yield f
    f.close()


def test_a_frozen_tenant_cannot_submit_and_the_refusal_names_the_switch(fleet):
    fleet.call("flip_switch", "tenant", "acme", "freeze", "incident 42", BY)
    with pytest.raises(Frozen, match="tenant acme is frozen by switch #1") as err:
        fleet.call("submit", ONE, "s", "acme")
    assert BY in str(err.value) and "incident 42" in str(err.value)
    assert fleet.call("counts", None, "acme") == {}  # nothing of it was recorded


def test_a_freeze_holds_across_a_scheduler_restart_until_it_is_lifted(fleet):
    fleet.call("flip_switch", "tenant", "acme", "freeze", "", BY)
    fleet.restart()
    with pytest.raises(Frozen):
        fleet.call("open_sandbox", "acme")
    fleet.call("lift_switch", "tenant", "acme", BY)
    assert fleet.call("open_sandbox", "acme")["state"] == "open"


def test_a_freeze_leaves_the_tenants_open_sandbox_open(fleet, hosts):
    box = fleet.call("open_sandbox", "acme")
    fleet.call("flip_switch", "tenant", "acme", "freeze", "", BY)
    assert fleet.call("get_sandbox", box["id"])["state"] == "open"
    assert box["id"] in hosts.boxes["h1"]


def test_a_kill_closes_the_tenants_sandboxes_on_their_host(fleet, hosts):
    box = fleet.call("open_sandbox", "acme", key_id="k1")
    got = fleet.call("flip_switch", "key", "k1", "kill", "leaked key", BY)
    assert got["sandboxes_closed"] == 1
    assert "killed by switch" in fleet.call("get_sandbox", box["id"])["close_reason"]
    until(lambda: box["id"] not in hosts.boxes["h1"])


def test_a_frozen_sandbox_cannot_be_extended(fleet):
    box = fleet.call("open_sandbox", "acme")
    fleet.call("flip_switch", "sandbox", box["id"], "freeze", "", BY)
    with pytest.raises(Frozen, match=f"extending sandbox {box['id']}"):
        fleet.call("extend_sandbox", box["id"], 60.0)


@pytest.mark.parametrize("level,target", [("iteration", "nope"), ("suite", "nope"),
                                          ("sandbox", "sbx-nope"), ("host", "h9")])
def test_a_target_nobody_knows_is_not_found(fleet, level, target):
    with pytest.raises(NotFound):
        fleet.call("flip_switch", level, target, "freeze", "", BY)


def test_the_list_shows_who_flipped_what_and_the_history_keeps_lifted_ones(fleet):
    fleet.call("flip_switch", "host", "h1", "freeze", "maintenance", BY)
    (on,) = fleet.call("switches")
    assert (on["level"], on["target"], on["flipped_by"], on["reason"]) == (
        "host", "h1", BY, "maintenance")
    fleet.call("lift_switch", "host", "h1", "key:adm cli:bo@box", "done")
    assert fleet.call("switches") == []
    (old,) = fleet.call("switches", True)
    assert (old["active"], old["lifted_by"]) == (False, "key:adm cli:bo@box")
