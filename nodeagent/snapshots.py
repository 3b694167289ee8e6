"""Saved, booted guests to restore instead of booting a kernel.

A slot is one guest booted once and saved: its frozen disk (`disk.qcow2`, an overlay of the
golden image) and its memory and device state (`state.save`). libvirt restores a saved guest
only under its own name and UUID, and two live domains cannot share either, so a slot serves
one VM at a time: a restored VM holds its slot until it is destroyed (an flock on the slot's
`in-use.lock`, so several node agents on one host share slots safely, and a crashed agent's
slots come free with it). Each restore gets a fresh
overlay on top of the frozen disk, so nothing a VM writes reaches the slot or the next VM.

Slots live under `<data>/snapshots/<image digest>-<size>-<accel>/<n>/` and survive restarts of
the node agent; a slot that fails to restore is deleted and made again later.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from tryfleet.private import TRAVERSE_MODE, private_dir

from .hypervisor import DOMAIN_PREFIX

SLOT_PREFIX = f"{DOMAIN_PREFIX}snap-"
STATE_FILE = "state.save"
DISK_FILE = "disk.qcow2"
LOCK_FILE = "in-use.lock"


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What makes two VMs interchangeable: the image build and the size."""

    image: str
    digest: str
    cpus: int
    mem_mib: int
    disk_mib: int | None

    @property
    def slug(self) -> str:
        return f"{self.digest[:12]}-{self.cpus}c-{self.mem_mib}m-{self.disk_mib or 0}d"

    def describe(self) -> dict[str, object]:
        return {"image": self.image, "digest": self.digest[:12], "cpus": self.cpus,
                "mem_mib": self.mem_mib, "disk_mib": self.disk_mib}


@dataclass(frozen=True, slots=True)
class Slot:
    key: PoolKey
    index: int
    dir: Path
    accel: str

    @property
    def name(self) -> str:
        """The saved domain's name, which every restore of this slot keeps."""
        return f"{SLOT_PREFIX}{self.key.slug}-{self.accel}-{self.index}"

    @property
    def state(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def disk(self) -> Path:
        return self.dir / DISK_FILE


class Snapshots:
    def __init__(self, root: Path, accel: str, max_slots_per_key: int = 8) -> None:
        self.root = root
        self.accel = accel
        self.max_slots_per_key = max_slots_per_key
        self._busy: dict[Path, int] = {}  # slot dir -> fd holding its in-use lock
        self._making: dict[PoolKey, int] = {}
        self._lock = threading.Lock()

    def prune(self, current: Collection[str]) -> list[Path]:
        """Remove the saved guests of image builds that are no longer current (`current`: the
        digests of the builds images stand for now), so rebuilds do not pile them up on disk.
        A VM running from a removed slot keeps its open files."""
        if not self.root.is_dir():
            return []
        keep = {d[:12] for d in current}
        removed = []
        with self._lock:
            for folder in self.root.iterdir():
                digest = folder.name.split("-", 1)[0]
                if folder.is_dir() and digest not in keep and self._all_free(folder):
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
        return removed

    def _all_free(self, folder: Path) -> bool:
        """No slot under folder is in use, here or by another process."""
        fds = []
        try:
            for sub in folder.iterdir():
                if sub.is_dir():
                    fd = None if sub in self._busy else _claim(sub)
                    if fd is None:
                        return False
                    fds.append(fd)
            return True
        finally:
            for fd in fds:
                os.close(fd)

    def _key_dir(self, key: PoolKey) -> Path:
        return self.root / f"{key.slug}-{self.accel}"

    def _ready(self, key: PoolKey) -> list[Slot]:
        folder = self._key_dir(key)
        if not folder.is_dir():
            return []
        slots = []
        for sub in folder.iterdir():
            if sub.name.isdigit() and (sub / STATE_FILE).exists():
                slots.append(Slot(key, int(sub.name), sub, self.accel))
        return sorted(slots, key=lambda s: s.index)

    def take(self, key: PoolKey) -> Slot | None:
        """A ready slot nobody is using, now marked busy; None if there is none."""
        with self._lock:
            for slot in self._ready(key):
                if slot.dir not in self._busy:
                    fd = _claim(slot.dir)
                    if fd is not None:
                        self._busy[slot.dir] = fd
                        return slot
        return None

    def release(self, slot: Slot) -> None:
        with self._lock:
            fd = self._busy.pop(slot.dir, None)
            if fd is not None:
                os.close(fd)

    def discard(self, slot: Slot) -> None:
        """Delete a slot that failed to restore (an upgraded QEMU, a damaged file)."""
        shutil.rmtree(slot.dir, ignore_errors=True)
        self.release(slot)

    def counts(self, key: PoolKey) -> tuple[int, int]:
        """(ready slots, of which busy)."""
        with self._lock:
            ready = self._ready(key)
            return len(ready), sum(1 for s in ready if s.dir in self._busy)

    def can_make(self, key: PoolKey) -> bool:
        with self._lock:
            total = len(self._ready(key)) + self._making.get(key, 0)
            return total < self.max_slots_per_key

    def new_slot(self, key: PoolKey) -> Slot:
        """A fresh slot directory to boot and save into; `finish` or `abandon` it."""
        with self._lock:
            folder = self._key_dir(key)
            for way in (self.root, folder):  # QEMU passes through; nobody lists them
                private_dir(way, TRAVERSE_MODE)
            index = 0
            while (folder / str(index)).exists():
                index += 1
            (folder / str(index)).mkdir(mode=TRAVERSE_MODE)
            self._making[key] = self._making.get(key, 0) + 1
            return Slot(key, index, folder / str(index), self.accel)

    def finish(self, slot: Slot) -> None:
        slot.disk.chmod(0o444)  # frozen: every restore stacks its own overlay on it
        with self._lock:
            self._making[slot.key] -= 1

    def abandon(self, slot: Slot) -> None:
        with self._lock:
            self._making[slot.key] -= 1
            shutil.rmtree(slot.dir, ignore_errors=True)


def _claim(slot_dir: Path) -> int | None:
    """The slot's in-use lock, taken without waiting; None when another holder has it."""
    try:
        fd = os.open(slot_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
