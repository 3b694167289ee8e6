"""Data at rest: after a run through the real gateway, scheduler, ledger, audit trail and a
node agent (on the fake hypervisor), nothing in the data directory that holds outputs, keys,
secrets or records is readable by anyone but its owner; and `harden` puts right a data
directory an older version left world-readable, leaving QEMU its way to the images."""

import os
import stat

import httpx

import tryfleet
from tryfleet.private import harden
from tryfleet.scheduler.records import Iteration

from .servedapi import served_api

QEMU_OPENS = (".qcow2", "vmlinuz", "initrd.img")


def readable_by_others(data_dir):
    """Paths under data_dir that group or others may read (images and build scratch aside:
    golden images are readable on purpose, and hold no tenant's data)."""
    found = []
    for root, dirs, files in os.walk(data_dir):
        rel = os.path.relpath(root, data_dir).split(os.sep)
        if {"images", "tmp"} & set(rel):  # also a node's own data directory's
            continue
        for name in dirs + files:
            path = os.path.join(root, name)
            if (name in files and name.endswith(QEMU_OPENS)) or name == "audit.pub":
                continue  # what QEMU opens; a public key, public by design
            if stat.S_IMODE(os.lstat(path).st_mode) & 0o044:
                found.append(os.path.relpath(path, data_dir))
    return found


def test_after_a_run_nothing_but_images_is_readable_by_others(tmp_path):
    old = os.umask(0o022)  # the usual umask: what is private must be made so on purpose
    try:
        with served_api(tmp_path, audit=True) as served:
            admin = tryfleet.connect(served.url, served.admin)
            admin.secrets.set("acme", "CI_TOKEN", "the-value")
            fleet = tryfleet.connect(served.url, served.key("acme"))
            fleet.run(Iteration(image="base", command=("sh", "-c", "echo out; echo err >&2"),
                                id="one"))
            with httpx.Client(base_url=served.url, timeout=60, headers={
                    "Authorization": f"Bearer {served.key('acme')}"}) as c:
                sid = c.post("/v1/sandboxes", json={}).json()["id"]
                c.post(f"/v1/sandboxes/{sid}/exec", json={"argv": ["echo", "hi"]})
                c.delete(f"/v1/sandboxes/{sid}")
            data = served.data_dir
            assert (data / "ledger.db-wal").exists() and (data / "audit.db").exists()
            assert readable_by_others(data) == []
    finally:
        os.umask(old)


def test_harden_puts_right_what_an_older_version_left_readable(tmp_path):
    data = tmp_path / "data"
    for d in ("images/base/abc", "run/own1/vm-1", "logs/vm-1", "snapshots/k/0", "secrets"):
        (data / d).mkdir(parents=True, mode=0o755)
    for f in ("ledger.db", "ledger.db-wal", "logs/vm-1/console.log", "run/own1/vm-1/disk.qcow2",
              "snapshots/k/0/state.save", "images/base/abc/rootfs.qcow2", "policy.toml"):
        (data / f).write_text("x")
        (data / f).chmod(0o644)
    harden(data)
    assert readable_by_others(data) == []
    mode = {p: stat.S_IMODE((data / p).stat().st_mode) for p in (
        ".", "images", "images/base/abc", "run/own1/vm-1", "logs", "secrets",
        "images/base/abc/rootfs.qcow2")}
    assert mode == {".": 0o711, "images": 0o711, "images/base/abc": 0o711,
                    "run/own1/vm-1": 0o711, "logs": 0o700, "secrets": 0o700,
                    "images/base/abc/rootfs.qcow2": 0o644}
