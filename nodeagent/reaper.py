"""Who owns which VM, and removal of whatever a crashed run left behind.

Every node-agent process registers as an owner: a directory `run/<owner>/` holding `owner.json`
(pid and process start time, so a reused pid is not mistaken for the owner). Its domains are
named `tryfleet-<owner>-<n>` and its overlays live under its directory. Whatever belongs to an
owner that is no longer alive is removed; several agents on one host never reap each other.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from tryfleet.private import write_private

from .errors import HypervisorError
from .hypervisor import DOMAIN_PREFIX, EGRESS_SOCKETS, Hypervisor
from .snapshots import SLOT_PREFIX

OWNER_FILE = "owner.json"


@dataclass(frozen=True, slots=True)
class Owner:
    id: str
    dir: Path


@dataclass(frozen=True, slots=True)
class ReapReport:
    domains: tuple[str, ...]
    dirs: tuple[str, ...]


def register_owner(run_dir: Path) -> Owner:
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o711)  # QEMU passes through to overlays; nobody lists them
    me = psutil.Process()
    while True:
        owner_id = secrets.token_hex(4)
        path = run_dir / owner_id
        try:
            path.mkdir(mode=0o711)
            break
        except FileExistsError:
            continue
    info = {"pid": me.pid, "create_time": me.create_time()}
    write_private(path / OWNER_FILE, json.dumps(info).encode())
    return Owner(owner_id, path)


def owner_of(domain: str, hv: Hypervisor) -> str | None:
    """The owner id of one of our domains: in its name (`tryfleet-<owner>-<n>`), or, for a
    guest restored from a slot (named after the slot), in its metadata."""
    if domain.startswith(SLOT_PREFIX):
        found = re.search(r"<(?:\w+:)?owner>([0-9a-f]+)</", hv.domain_xml(domain) or "")
        return found.group(1) if found else None
    if not domain.startswith(DOMAIN_PREFIX):
        return None
    owner = domain[len(DOMAIN_PREFIX):].split("-", 1)[0]
    return owner or None


def owner_alive(run_dir: Path, owner_id: str) -> bool:
    try:
        info = json.loads((run_dir / owner_id / OWNER_FILE).read_text())
        proc = psutil.Process(int(info["pid"]))
        return abs(proc.create_time() - float(info["create_time"])) < 0.01
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return False


def reap(hv: Hypervisor, run_dir: Path, keep: str | None = None) -> ReapReport:
    """Destroy domains and delete directories of owners that are gone (never `keep`'s)."""
    alive: dict[str, bool] = {}

    def gone(owner_id: str) -> bool:
        if owner_id == keep:
            return False
        if owner_id not in alive:
            alive[owner_id] = owner_alive(run_dir, owner_id)
        return not alive[owner_id]

    domains = []
    for name in hv.list_domains(DOMAIN_PREFIX):
        owner_id = owner_of(name, hv)
        if owner_id is None or gone(owner_id):
            try:
                hv.destroy(name)
                domains.append(name)
            except HypervisorError:
                continue  # reported again at the next reap; never blocks start-up
    hv.reap_networks(gone)
    egress = run_dir.parent / EGRESS_SOCKETS  # the proxy sockets of egress guests, <vm>.sock
    if egress.is_dir():
        for sock in egress.glob(f"{DOMAIN_PREFIX}*.sock"):
            owner_id = owner_of(sock.name.removesuffix(".sock"), hv)
            if owner_id is not None and gone(owner_id):
                sock.unlink(missing_ok=True)
    dirs = []
    if run_dir.is_dir():
        for entry in sorted(run_dir.iterdir()):
            if entry.is_dir() and gone(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                dirs.append(entry.name)
    return ReapReport(tuple(domains), tuple(dirs))
