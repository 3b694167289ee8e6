"""CPU weight by behaviour (nodeagent/cpuweight.py): a VM that keeps at one command, or keeps
the CPU busy with none running, yields to VMs that want it in short bursts."""

import pytest

from tests.unit.builders import make_image
from tryfleet.nodeagent import NodeAgent, NodeConfig, SandboxSpec
from tryfleet.nodeagent.cpuweight import (
    BUSY_SAMPLES,
    DEFAULT_SHARES,
    LONG_COMMAND_S,
    LOW_SHARES,
    CpuWeights,
    shares_for,
)
from tryfleet.nodeagent.fake_hv import FakeHypervisor


@pytest.mark.parametrize("age_s, busy, shares", [
    (None, [], DEFAULT_SHARES),  # just started, idle
    (0.2, [1.0] * BUSY_SAMPLES, DEFAULT_SHARES),  # short commands back to back
    (LONG_COMMAND_S + 0.1, [], LOW_SHARES),  # one command that goes on
    (None, [0.9] * BUSY_SAMPLES, LOW_SHARES),  # busy with nothing the host runs
    (None, [0.9] * (BUSY_SAMPLES - 1), DEFAULT_SHARES),  # not for long enough yet
    (None, [0.9, 0.01, 0.9], DEFAULT_SHARES),  # a burst, then idle
])
def test_shares_by_behaviour(age_s, busy, shares):
    assert shares_for(age_s, busy) == shares


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    make_image(tmp_path, "base")
    n = NodeAgent(NodeConfig(data_dir=tmp_path, restore=False), FakeHypervisor())
    n.cpu_weights.close()  # stepped by hand below
    yield n
    n.close()


def test_a_vm_busy_in_the_background_is_weighed_down_and_back_up_once_quiet(node):
    box = node.acquire(SandboxSpec("base"))
    weights = CpuWeights(node.hv, node._live_boxes)
    weights.step(0.0)
    for i in range(1, BUSY_SAMPLES + 1):
        node.hv.cpu_ns[box.name] = i * 1_000_000_000  # a whole core each second
        got = weights.step(float(i))
    assert got == {box.name: LOW_SHARES} and node.hv.cpu_shares[box.name] == LOW_SHARES
    weights.step(float(BUSY_SAMPLES + 1))  # no CPU used in this second
    assert node.hv.cpu_shares[box.name] == DEFAULT_SHARES
    box.destroy()
    assert weights.step(99.0) == {}


def test_a_vm_running_one_long_command_is_weighed_down_while_it_runs(node):
    box = node.acquire(SandboxSpec("base"))
    weights = CpuWeights(node.hv, node._live_boxes)
    box._running.append(10.0)  # as exec does for a command that began at 10.0
    assert weights.step(10.5) == {box.name: DEFAULT_SHARES}
    assert weights.step(10.0 + LONG_COMMAND_S + 0.5) == {box.name: LOW_SHARES}
    weights.paused = True  # the default weight for all while paused
    assert weights.step(12.0 + LONG_COMMAND_S) == {box.name: DEFAULT_SHARES}
    weights.paused = False
    box._running.clear()
    assert weights.step(20.0) == {box.name: DEFAULT_SHARES}
    box.destroy()


def test_exec_marks_when_the_command_began_and_forgets_it_after(node):
    box = node.acquire(SandboxSpec("base"))
    seen = []
    box.exec(["sh", "-c", "echo hi"], on_output=lambda s, d: seen.append(box.command_since))
    assert seen and seen[0] is not None and box.command_since is None
    box.destroy()
