"""Data at rest readable by its owner only.

The data directory holds outputs (the ledger), keys (admin.key, audit.key), secrets and
records (audit.db, checkpoints, kept logs, snapshots): files 0600, directories 0700. QEMU runs
as libvirt's own user and must still reach golden images and overlays, so the directories on
its way may be 0711 (it can pass through, never list or read), and the images themselves are
left as they are made. Modes are set when things are made (`private_umask`, `write_private`)
and put right at start-up for what older versions left behind (`harden`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
TRAVERSE_MODE = 0o711  # a directory QEMU passes through to reach images and overlays
UMASK = 0o077
# What may stay readable by others: the images QEMU boots (and their folders, for it to pass
# through). Paths relative to the data directory.
QEMU_DIRS = ("images", "run", "snapshots", "tmp")
IMAGE_DIRS = ("images", "tmp")  # their files are the image store's business (images/store.py)
PUBLIC_FILES = ("audit.pub",)  # the audit trail's public key: anyone may check signatures
SQLITE_SIDES = ("-wal", "-shm", "-journal")


def private_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """A directory made (with its parents) or put right to `mode`."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    if stat.S_IMODE(path.stat().st_mode) != mode:
        path.chmod(mode)
    return path


def write_private(path: Path, data: bytes) -> None:
    """`path` replaced atomically by data, mode 0600 from its creation on (never readable by
    others, not even for a moment), on disk when this returns."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an old tmp file left behind keeps its mode otherwise
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def private_db(path: Path) -> None:
    """A SQLite database file made 0600 before SQLite opens it (SQLite then makes its -wal
    and -shm files with the database's mode), or an existing one put right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        private_file(path)


def private_file(path: Path) -> None:
    """An existing file (and SQLite's -wal, -shm and -journal beside it) made 0600."""
    for p in (path, *(path.with_name(path.name + side) for side in SQLITE_SIDES)):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(p.stat().st_mode) & 0o077:
                p.chmod(FILE_MODE)


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories made meanwhile readable by their owner only (SQLite makes its
    -wal and -shm files with the process's umask)."""
    old = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(old)


def set_private_umask() -> None:
    """For a process of tryfleet's own (the head's actors, the CLI): everything it makes from
    now on readable by its owner only."""
    os.umask(os.umask(UMASK) | UMASK)


def harden(data_dir: Path) -> None:
    """Put the data directory right: 0711 for itself and the folders QEMU passes through,
    group and other bits off every other directory (kept logs, secrets, ...) and off every
    file but the disks, kernels and initrds QEMU opens (which libvirt hands to its user) and
    what the image store keeps readable on purpose (golden images and their builds: no
    tenant's data)."""
    if not data_dir.is_dir():
        return
    _strip(data_dir, TRAVERSE_MODE)
    for root, dirs, files in os.walk(data_dir):
        here = Path(root)
        rel = here.relative_to(data_dir).parts
        qemu_way = bool(rel) and rel[0] in QEMU_DIRS
        for d in dirs:
            _strip(here / d, TRAVERSE_MODE if qemu_way or (not rel and d in QEMU_DIRS)
                   else DIR_MODE)
        if rel and rel[0] in IMAGE_DIRS:
            continue
        for f in files:
            if not (qemu_way and _is_disk(f)) and f not in PUBLIC_FILES:
                _strip(here / f, None)


def _is_disk(name: str) -> bool:
    """What QEMU itself opens: disks, kernels and initrds (libvirt gives them to its user)."""
    return name.endswith((".qcow2", ".img", ".raw", ".iso", ".fd")) or name in (
        "vmlinuz", "initrd", "kernel")


def _strip(path: Path, dir_mode: int | None) -> None:
    """Group and other bits off a file; a directory's set to those of dir_mode (at most x)."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            return
        mode = stat.S_IMODE(st.st_mode)
        if dir_mode is not None and stat.S_ISDIR(st.st_mode):
            want = (mode & ~0o077) | (dir_mode & 0o077)
        else:
            want = mode & ~0o077
        if want != mode:
            path.chmod(want)


__all__ = ["DIR_MODE", "FILE_MODE", "QEMU_DIRS", "TRAVERSE_MODE", "UMASK", "harden",
           "private_db", "private_dir", "private_file", "private_umask", "set_private_umask",
           "write_private"]
