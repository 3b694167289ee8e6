"""What the real-VM scenarios share: a node agent on libvirt and the base image."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

from tryfleet.nodeagent import NodeAgent, NodeConfig, SandboxSpec, default_data_dir
from tryfleet.nodeagent.node import PoolTarget

SPEC = SandboxSpec("base", 1, 512, None)
SETUP_HINT = "run `bash scripts/setup.sh && .venv/bin/tryfleet image build base` first"


def node(warm_pool: bool, restore: bool, ready: int = 0, pool_max: int = 4) -> NodeAgent:
    targets = (PoolTarget("base", SPEC.cpus, SPEC.mem_mib, None, ready),) if ready else ()
    try:
        return NodeAgent(NodeConfig(Path(default_data_dir()), warm_pool=warm_pool,
                                    restore=restore, pool_targets=targets,
                                    pool_max_per_key=pool_max), reap_on_start=False)
    except Exception as err:  # no libvirtd, no image: say what to do
        sys.exit(f"benchmark needs libvirtd and the base image: {err}\n{SETUP_HINT}")


def vm_host_mib(name: str) -> float | None:
    """Host memory of one VM: the proportional set size of its QEMU process."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(f"guest={name}," in a or a == f"guest={name}" for a in cmd):
            try:
                return proc.memory_full_info().pss / 2**20
            except psutil.Error:
                return None
    return None


def ensure_slots(agent: NodeAgent, n: int) -> None:
    """At least n saved guests of SPEC to restore from (made once, kept on disk across runs):
    a timed run then measures the steady state, not the one-time saves."""
    snaps = agent.snapshots
    if snaps is None:
        return
    key, image = agent._key(SPEC), agent.image(SPEC.image)
    while snaps.counts(key)[0] < n and snaps.can_make(key):
        agent._make_slot(key, image)
