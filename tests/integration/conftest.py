"""Real VMs: libvirtd on qemu:///system, QEMU, and the built `base` image (scripts/test.sh)."""

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


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


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
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line.startswith("tryfleet-")]


@pytest.fixture
def leaves_nothing(node):
    """After the test: none of this node's domains and no overlay left on disk."""
    yield
    mine = [d for d in tryfleet_domains() if d.startswith(f"tryfleet-{node.owner.id}-")]
    left_dirs = [p.name for p in node.owner.dir.iterdir() if p.is_dir()]
    assert mine == [] and left_dirs == [] and node.live() == []


TRYFLEET = str(Path(sys.executable).with_name("tryfleet"))


def cli(*args, timeout=300, **kw):
    env = {**os.environ, "TRYFLEET_DATA": str(default_data_dir())}
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
