"""The node agent's batched calls on the fake hypervisor: start_many, and collect, the
scheduler's long-poll that returns every finished outcome until it is acknowledged."""

import os
import time

import pytest

from tests.unit.builders import make_image
from tests.waiting import until
from tryfleet.nodeagent.fake_hv import FakeHypervisor
from tryfleet.nodeagent.node import NodeConfig, PoolTarget
from tryfleet.nodeagent.service import NodeService
from tryfleet.wire import AttemptInfo, AttemptKey, HostStatus, Ids, IterationSpec, StartRequest


@pytest.fixture
def svc(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    make_image(tmp_path, "base")
    s = NodeService(NodeConfig(data_dir=tmp_path), "h1", FakeHypervisor())
    yield s
    s.close()


def req(iid, argv, attempt=1):
    return StartRequest(iid, attempt, IterationSpec("base", tuple(argv), timeout_s=30),
                        Ids(iteration=iid, attempt=attempt))


def collect_all(svc, n, timeout_s=30.0):
    """Long-poll (acknowledging nothing) until n outcomes are in: {id: outcome}."""
    got = {}

    def all_in():
        got.update((o.id, o) for o in svc.collect("h1", [], timeout_s=1.0))
        return len(got) == n

    until(all_in, timeout_s, explain=lambda: sorted(got))
    return got


def test_start_many_and_collect_until_acknowledged(svc):
    started = svc.start_many("h1", [req("a", ["sh", "-c", "echo a"]),
                                    req("b", ["sh", "-c", "exit 3"]), req("a", ["true"])])
    assert started == [True, True, False]  # the same attempt twice starts once
    got = collect_all(svc, 2)
    assert {k: (o.state, o.exit_code, o.attempt, o.host, o.failure) for k, o in got.items()} \
        == {"a": ("SUCCEEDED", 0, 1, "h1", None), "b": ("FAILED", 3, 1, "h1", None)}
    assert got["a"].stdout == b"a\n"
    assert set(svc.attempts("h1")) == {AttemptInfo("a", 1, True), AttemptInfo("b", 1, True)}
    # not acknowledged: sent again; acknowledged: forgotten
    assert [o.id for o in svc.collect("h1", [AttemptKey("a", 1)], timeout_s=0.1)] == ["b"]
    assert svc.collect("h1", [AttemptKey("b", 1)], timeout_s=0.1) == []
    assert svc.attempts("h1") == []


def test_collect_waits_for_the_first_outcome_then_returns_empty_on_timeout(svc):
    t0 = time.monotonic()
    assert svc.collect("h1", [], timeout_s=0.2) == []
    assert time.monotonic() - t0 >= 0.2
    svc.start_many("h1", [req("slow", ["sh", "-c", "sleep 0.3; echo done"])])
    t0 = time.monotonic()
    got = svc.collect("h1", [], timeout_s=10.0, linger_s=0.01)
    assert [o.id for o in got] == ["slow"] and time.monotonic() - t0 < 5


def test_output_of_an_attempt_and_none_for_one_unknown_here(svc):
    svc.start_many("h1", [req("a", ["sh", "-c", "echo out; echo err >&2"])])
    collect_all(svc, 1)
    out = svc.output("h1", AttemptKey("a", 1), 1, 0)
    assert (out.stdout, out.stderr, out.done) == (b"ut\n", b"err\n", True)
    assert svc.output("h1", AttemptKey("a", 2)) is None


def test_a_call_naming_another_host_is_refused(svc):
    from tryfleet.wire import WrongHost

    for call in (lambda: svc.start_many("h2", [req("a", ["true"])]),
                 lambda: svc.collect("h2", [], timeout_s=0.0), lambda: svc.attempts("h2"),
                 lambda: svc.cancel("h2", "a"), lambda: svc.cancel_all("h2")):
        with pytest.raises(WrongHost, match="serves host 'h1', not 'h2'"):
            call()
    assert svc.attempts("h1") == []  # nothing was started


def test_status_all_is_this_one_host_as_a_host_status(svc):
    (name, status), = svc.status_all().items()
    assert name == "h1" and isinstance(status, HostStatus)
    assert (status.host, status.accel, status.images, status.running) == \
        ("h1", "tcg", ("base",), 0)
    assert status.capacity.cpus == os.cpu_count() and status.pool == ()


def test_status_reports_ready_pooled_vms_and_their_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    make_image(tmp_path, "base")
    s = NodeService(NodeConfig(data_dir=tmp_path, warm_pool=True, restore=False,
                               pool_targets=(PoolTarget("base", mem_mib=256, ready=2),)),
                    "h1", FakeHypervisor())
    try:
        key = next(iter(s.node.pool.targets))
        assert s.node.pool.wait_ready(key, 2, timeout_s=30)
        status = s.status()
        assert status.warm == {"base": 2} and status.pool_mem_mib == 512
        assert [(r.image, r.ready) for r in status.pool] == [("base", 2)]
    finally:
        s.close()
