"""Warm pools and snapshot restore with real VMs: restored guests are usable at once, have the
host's clock and their own randomness, and each iteration gets a machine nobody used."""

import time

import pytest

from tryfleet.nodeagent import IterationSpec, NodeAgent, NodeConfig, SandboxSpec, State
from tryfleet.nodeagent.node import PoolTarget

from .conftest import domains_of

pytestmark = pytest.mark.vm
SPEC = SandboxSpec("base", 1, 512, None)


@pytest.fixture(scope="module")
def pooled(data_dir):
    node = NodeAgent(NodeConfig(data_dir=data_dir, warm_pool=True,
                                pool_targets=(PoolTarget("base", ready=2),)))
    yield node
    node.close()
    assert domains_of({node.owner.id}) == []
    assert node.live() == []


def test_pool_hands_out_restored_vms_with_the_hosts_clock_and_own_entropy(pooled):
    key = pooled._key(SPEC)
    assert pooled.pool.wait_ready(key, 2, timeout_s=300)
    a, b = pooled.acquire(SPEC), pooled.acquire(SPEC)
    try:
        assert (a.origin, b.origin) == ("pool", "pool")
        outs = [box.exec(["sh", "-c", "date +%s; head -c 16 /dev/urandom | od -An -tx1"])
                for box in (a, b)]
        clocks = [int(o.stdout.split(b"\n")[0]) for o in outs]
        assert all(abs(c - time.time()) < 5 for c in clocks), clocks
        assert outs[0].stdout.split(b"\n", 1)[1] != outs[1].stdout.split(b"\n", 1)[1]
    finally:
        a.destroy()
        b.destroy()


def test_nothing_of_an_iteration_reaches_the_next(pooled):
    key = pooled._key(SPEC)
    for n in range(3):
        assert pooled.pool.wait_ready(key, 1, timeout_s=300)
        out = pooled.run_iteration(IterationSpec(image="base", argv=(
            "sh", "-c", f"ls /root /tmp; pgrep -x sleep && echo FOUND; echo {n} > /root/left; "
                        "(sleep 1000 &); true")))
        assert out.state is State.SUCCEEDED
        assert b"left" not in out.stdout and b"FOUND" not in out.stdout, out.stdout
