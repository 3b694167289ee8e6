"""The node agent's batched calls on the fake hypervisor: start_many, and collect, the
scheduler's long-poll that returns every finished outcome until it is acknowledged."""

import time

import pytest

from tryfleet.nodeagent.fake_hv import FakeHypervisor
from tryfleet.nodeagent.node import NodeConfig
from tryfleet.nodeagent.service import NodeService
from tests.unit.builders import make_image


@pytest.fixture
def svc(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    make_image(tmp_path, "base")
    s = NodeService(NodeConfig(data_dir=tmp_path), "h1", FakeHypervisor())
    yield s
    s.close()


def req(iid, argv, attempt=1):
    return {"id": iid, "attempt": attempt, "ids": {"iteration": iid, "attempt": attempt},
            "iteration": {"image": "base", "command": argv, "timeout_s": 30}}


def test_start_many_and_collect_until_acknowledged(svc):
    started = svc.start_many([req("a", ["sh", "-c", "echo a"]), req("b", ["sh", "-c", "exit 3"]),
                              req("a", ["true"])])
    assert started == [True, True, False]  # the same attempt twice starts once
    got: dict[str, dict] = {}
    deadline = time.monotonic() + 30
    while len(got) < 2 and time.monotonic() < deadline:
        for o in svc.collect([], timeout_s=5.0):
            got[o["id"]] = o
    assert {k: (o["state"], o["exit_code"], o["attempt"], o["host"]) for k, o in got.items()} \
        == {"a": ("SUCCEEDED", 0, 1, "h1"), "b": ("FAILED", 3, 1, "h1")}
    assert got["a"]["stdout"] == b"a\n"
    # not acknowledged: sent again; acknowledged: forgotten
    assert [o["id"] for o in svc.collect([("a", 1)], timeout_s=0.1)] == ["b"]
    assert svc.collect([("b", 1)], timeout_s=0.1) == []
    assert svc.attempts() == []


def test_collect_waits_for_the_first_outcome_then_returns_empty_on_timeout(svc):
    t0 = time.monotonic()
    assert svc.collect([], timeout_s=0.2) == []
    assert time.monotonic() - t0 >= 0.2
    svc.start_many([req("slow", ["sh", "-c", "sleep 0.3; echo done"])])
    t0 = time.monotonic()
    got = svc.collect([], timeout_s=10.0, linger_s=0.01)
    assert [o["id"] for o in got] == ["slow"] and time.monotonic() - t0 < 5


def test_status_reports_ready_pooled_vms_and_their_memory(tmp_path, monkeypatch):
    from tryfleet.nodeagent.node import PoolTarget

    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    make_image(tmp_path, "base")
    s = NodeService(NodeConfig(data_dir=tmp_path, warm_pool=True, restore=False,
                               pool_targets=(PoolTarget("base", mem_mib=256, ready=2),)),
                    "h1", FakeHypervisor())
    try:
        key = next(iter(s.node.pool.targets))
        assert s.node.pool.wait_ready(key, 2, timeout_s=30)
        status = s.status()
        assert status["warm"] == {"base": 2} and status["pool_mem_mib"] == 512
        assert [(r["image"], r["ready"]) for r in status["pool"]] == [("base", 2)]
    finally:
        s.close()
