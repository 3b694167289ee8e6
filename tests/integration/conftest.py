"""Integration tests run against the real things: the installed `tryfleet` command, libvirtd on
qemu:///system, QEMU, the built `base` image (scripts/test.sh builds it), and Ray. Those that
boot real VMs are marked `vm`; the others (the multi-node Ray fleet on the fake hypervisor,
command-line checks refused before any VM) still need what their module uses."""

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tryfleet.images import ImageError, ImageStore
from tryfleet.nodeagent import NodeAgent, NodeConfig, default_data_dir
from tryfleet.nodeagent.reaper import owner_alive, owner_of

URI = "qemu:///system"


@pytest.fixture(scope="session")
def data_dir():
    path = default_data_dir()
    try:
        ImageStore(path).get("base")
    except ImageError as err:
        pytest.fail(f"real-VM tests need the base image: {err}")
    return path


@pytest.fixture(scope="module")
def node(data_dir):
    n = NodeAgent(NodeConfig(data_dir=data_dir))
    yield n
    n.close()


def tryfleet_domains():
    """Every tryfleet domain on this host, whoever runs it (other people's too)."""
    out = subprocess.run(["virsh", "-c", URI, "list", "--all", "--name"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line.startswith("tryfleet-")]


class _Virsh:
    """What reaper.owner_of asks of a hypervisor, through virsh (no connection held)."""

    def domain_xml(self, name):
        r = subprocess.run(["virsh", "-c", URI, "dumpxml", name], capture_output=True,
                           text=True)
        return r.stdout if r.returncode == 0 else None


def domains_of(owners):
    """The tryfleet domains that node-agent owners `owners` (ids) run, restored ones too."""
    return [d for d in tryfleet_domains() if owner_of(d, _Virsh()) in owners]


def leftover_domains(data_dir):
    """tryfleet domains whose owner is gone: what a finished run left behind. Domains of
    runs still going (this machine is shared) are not counted."""
    run_dir = data_dir / "run"
    return [d for d in tryfleet_domains()
            if not owner_alive(run_dir, owner_of(d, _Virsh()) or "")]


@pytest.fixture
def leaves_nothing(node):
    """After the test: none of this node's domains and no overlay left on disk."""
    yield
    left_dirs = [p.name for p in node.owner.dir.iterdir() if p.is_dir()]
    assert domains_of({node.owner.id}) == [] and left_dirs == [] and node.live() == []


TRYFLEET = str(Path(sys.executable).with_name("tryfleet"))


def cli(*args, timeout=300, **kw):
    env = {**os.environ, "TRYFLEET_DATA": str(default_data_dir()), **kw.pop("env", {})}
    return subprocess.run([TRYFLEET, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, **kw)


@contextlib.contextmanager
def own_data_dir(data_dir):
    """A data dir of a test's own (its up.json, ledger, keys and logs) that shares the built
    images, saved guests and accelerator probe, and run/ (the reaper must see every owner on
    this host, or it takes their VMs for leftovers). Next to the real one: QEMU runs as its own
    user, and must reach the disks through it."""
    own = Path(tempfile.mkdtemp(prefix=f"{data_dir.name}-test-", dir=data_dir.parent))
    own.chmod(0o755)
    for shared in ("images", "snapshots", "run"):
        (own / shared).symlink_to(data_dir / shared)
    (own / "host").mkdir()
    if (data_dir / "host" / "accel.json").exists():
        shutil.copy(data_dir / "host" / "accel.json", own / "host" / "accel.json")
    try:
        yield own
    finally:
        shutil.rmtree(own)  # the shared folders are symlinks: removed, not followed
