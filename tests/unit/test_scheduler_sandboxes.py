"""The scheduler's interactive sandboxes over simulated hosts that hold them (no VM, no Ray):
quota, waiting for room, a host that cannot open one, extend, close, expiry, and a restart that
rebuilds the leases from the ledger."""

import asyncio
from typing import Any

import pytest

from tests.waiting import until
from tryfleet.errors import (
    BadRequest,
    CannotPlace,
    InfrastructureError,
    NoRoom,
    NotFound,
    QuotaExceeded,
)
from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, SimHosts, SimHostSpec
from tryfleet.scheduler.service import Scheduler
from tryfleet.wire import SandboxGone, SandboxOpen, pack, unpack

from .localfleet import FAST, Local, LoopThread


class BoxHosts(SimHosts):
    """Simulated hosts that also hold sandboxes (sid -> timeout_s), as a node agent does."""

    def __init__(self, hosts: list[SimHostSpec]) -> None:
        super().__init__(hosts, FAST)
        self.boxes: dict[str, dict[str, float]] = {h.name: {} for h in hosts}
        self.fail_open: Exception | None = None

    async def sandbox_open(self, host: str, request: bytes) -> str:
        req = unpack(SandboxOpen, request)
        if self.fail_open is not None:
            raise self.fail_open
        self.boxes[host][req.sid] = req.timeout_s
        return f"vm-{req.sid}"

    async def sandbox_extend(self, host: str, sid: str, timeout_s: float) -> None:
        if sid not in self.boxes[host]:
            raise SandboxGone(f"sandbox {sid} is not open on {host}")
        self.boxes[host][sid] = timeout_s

    async def sandbox_close(self, host: str, sid: str) -> bool:
        return self.boxes[host].pop(sid, None) is not None

    async def sandbox_list(self, host: str) -> bytes:
        return pack(sorted(self.boxes[host]))


class Fleet:
    """The real Scheduler on a loop in a thread, over BoxHosts."""

    def __init__(self, tmp_path: Any, hosts: BoxHosts) -> None:
        self.loop, self.hosts, self.path = LoopThread(), hosts, tmp_path / "ledger.db"
        self.sched = self._scheduler()

    def _scheduler(self) -> Scheduler:
        sched = Scheduler(str(self.path))
        sched.engine.hosts.discover = lambda: []  # type: ignore[method-assign]
        sched.engine.hosts.agents = {SIM_GROUP_PREFIX + "test": Local(self.hosts)}
        return sched

    def call(self, method: str, *args: Any, **kw: Any) -> Any:
        return self.loop.run(getattr(self.sched, method)(*args, **kw))

    def restart(self) -> None:
        """A new scheduler on the same ledger (the old one's memory is gone)."""
        task = self.sched.engine._loop_task
        if task is not None:
            self.loop.loop.call_soon_threadsafe(task.cancel)
        self.sched = self._scheduler()

    def close(self) -> None:
        self.loop.stop()


@pytest.fixture
def hosts():
    return BoxHosts([SimHostSpec("h1", cpus=2, mem_mib=8192)])


@pytest.fixture
def fleet(tmp_path, hosts):
    f = Fleet(tmp_path, hosts)
    yield f
    f.close()


def test_open_records_who_asked_and_the_host_holds_it(fleet, hosts):
    box = fleet.call("open_sandbox", "acme", "base", 1, 512, None, 60.0, {"pr": "7"},
                     "key1", "req_1")
    assert (box["tenant"], box["host"], box["vm"], box["state"]) == ("acme", "h1",
                                                                    f"vm-{box['id']}", "open")
    assert (box["key_id"], box["request_id"], box["metadata"]) == ("key1", "req_1",
                                                                  {"pr": "7"})
    assert list(hosts.boxes["h1"]) == [box["id"]]
    assert fleet.call("get_sandbox", box["id"], "acme") == box


def test_a_tenant_over_its_quota_is_refused_naming_the_limit(fleet):
    fleet.call("open_sandbox", "acme", limits={"max_sandboxes": 1})
    with pytest.raises(QuotaExceeded) as err:
        fleet.call("open_sandbox", "acme", limits={"max_sandboxes": 1})
    assert (err.value.limit, err.value.value) == ("max_sandboxes", 1)
    fleet.call("open_sandbox", "globex", limits={"max_sandboxes": 1})  # its own count


def test_no_room_waits_then_says_so_and_never_is_said_at_once(fleet):
    fleet.call("open_sandbox", "acme", cpus=2)
    with pytest.raises(NoRoom, match=r"within 0\.3s"):
        fleet.call("open_sandbox", "acme", wait_s=0.3)
    with pytest.raises(CannotPlace, match="never"):
        fleet.call("open_sandbox", "acme", cpus=64)
    with pytest.raises(CannotPlace, match="image"):
        fleet.call("open_sandbox", "acme", image="nope")
    assert len(fleet.call("list_sandboxes", "acme")["items"]) == 1


def test_a_waiting_sandbox_gets_the_room_another_one_frees(fleet):
    first = fleet.call("open_sandbox", "acme", cpus=2)
    waiting = asyncio.run_coroutine_threadsafe(fleet.sched.open_sandbox("acme", wait_s=30),
                                               fleet.loop.loop)
    fleet.call("close_sandbox", first["id"], "acme")
    assert waiting.result(30)["state"] == "open"


def test_a_host_that_cannot_open_it_leaves_it_closed_with_the_error(fleet, hosts):
    hosts.fail_open = RuntimeError("libvirt said no")
    with pytest.raises(InfrastructureError, match="libvirt said no"):
        fleet.call("open_sandbox", "acme", cpus=2)
    (closed,) = fleet.call("list_sandboxes", "acme", "closed")["items"]
    assert "libvirt said no" in closed["close_reason"]
    hosts.fail_open = None
    fleet.call("open_sandbox", "acme", cpus=2)  # its capacity was given back


def test_extend_moves_the_expiry_here_and_on_the_host(fleet, hosts):
    box = fleet.call("open_sandbox", "acme", timeout_s=60.0)
    longer = fleet.call("extend_sandbox", box["id"], 3600.0, "acme")
    assert longer["expires_at"] > box["expires_at"] + 3000
    assert hosts.boxes["h1"][box["id"]] == 3600.0


def test_extending_one_its_host_lost_closes_it_and_says_it_is_gone(fleet, hosts):
    box = fleet.call("open_sandbox", "acme")
    hosts.boxes["h1"].clear()  # its VM went with a restart of the node agent
    with pytest.raises(NotFound, match="gone"):
        fleet.call("extend_sandbox", box["id"], 60.0, "acme")
    assert fleet.call("get_sandbox", box["id"])["state"] == "closed"


def test_close_is_idempotent_and_tenant_scoped(fleet, hosts):
    box = fleet.call("open_sandbox", "acme")
    with pytest.raises(NotFound, match="no sandbox"):
        fleet.call("close_sandbox", box["id"], "globex")
    closed = fleet.call("close_sandbox", box["id"], "acme")
    assert (closed["state"], closed["close_reason"]) == ("closed", "closed by request")
    assert fleet.call("close_sandbox", box["id"], "acme") == closed
    assert hosts.boxes["h1"] == {}


def test_an_expired_sandbox_is_closed_on_its_host_and_in_the_ledger(fleet, hosts):
    box = fleet.call("open_sandbox", "acme", timeout_s=0.2)
    until(lambda: fleet.call("get_sandbox", box["id"])["state"] == "closed", timeout_s=10)
    assert fleet.call("get_sandbox", box["id"])["close_reason"] == "its timeout passed"
    until(lambda: hosts.boxes["h1"] == {}, timeout_s=10)


def test_a_restarted_scheduler_rebuilds_leases_from_the_ledger(fleet, hosts):
    kept = fleet.call("open_sandbox", "acme", timeout_s=600)
    lost = fleet.call("open_sandbox", "acme", timeout_s=600)
    hosts.boxes["h1"].pop(lost["id"])  # the host no longer holds this one
    fleet.restart()
    fleet.call("ping")
    assert fleet.call("get_sandbox", kept["id"])["state"] == "open"
    gone = fleet.call("get_sandbox", lost["id"])
    assert gone["state"] == "closed" and "no longer open on h1" in gone["close_reason"]
    with pytest.raises(NoRoom):  # the kept one holds one of the two cpus
        fleet.call("open_sandbox", "acme", cpus=2)
    with pytest.raises(QuotaExceeded):  # and counts for the quota
        fleet.call("open_sandbox", "acme", limits={"max_sandboxes": 1})


def test_bad_egress_rules_are_refused_before_anything_is_leased_or_recorded(fleet):
    with pytest.raises(BadRequest, match="egress"):
        fleet.call("open_sandbox", "acme", egress=["ok.test:80", ""],
                   limits={"max_sandboxes": 1})
    assert fleet.call("list_sandboxes", "acme", state="all")["items"] == []
    fleet.call("open_sandbox", "acme", limits={"max_sandboxes": 1})  # its quota is untouched
