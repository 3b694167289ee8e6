"""The guest agent's file operations: write and read in chunks, stat, list a directory (to a
depth, bounded), make a directory (with its parents), remove a file or a tree, move.

Copied into every guest image beside agent.py; imports nothing of the host side. The functions
take the real path to act on (the same as the guest path in a VM; under a scratch root for the
fake hypervisor) and, where they report paths, the guest path; FileOps holds the agent's
requests that call them. Names are sent as UTF-8 text: bytes that are not UTF-8 become U+FFFD.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import stat
from collections.abc import Iterator
from typing import Any

try:
    from . import wire
except ImportError:  # run as a script inside the guest
    import wire  # type: ignore[no-redef,import-not-found]

MAX_ENTRIES = 10_000  # most entries one listing returns
MAX_DEPTH = 16
# Entries of a listing go in frames of about this many bytes (well under MAX_FRAME_BYTES).
LISTING_BATCH_BYTES = 256 * 1024


class RequestError(Exception):
    """A request the agent cannot honour; reported to the host as an error event (with
    `code` when the host should tell it apart, as it does the errno names of OSError)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def field(msg: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    value = msg.get(key, default)
    if value is ...:
        raise RequestError(f"missing field {key!r}")
    if value is not None and not isinstance(value, kind):
        raise RequestError(f"field {key!r} has type {type(value).__name__}")
    return value


def text(value: str) -> str:
    """A str that msgpack can send: lone surrogates (bytes of a non-UTF-8 name) replaced."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def error_code(err: OSError) -> str | None:
    """ENOENT and the like, for the host to tell a missing path from a broken guest."""
    return errno.errorcode.get(err.errno) if err.errno is not None else None


_names: dict[tuple[str, int], str] = {}


def _name(kind: str, ident: int) -> str:
    key = (kind, ident)
    if key not in _names:
        try:
            found = pwd.getpwuid(ident).pw_name if kind == "u" else grp.getgrgid(ident).gr_name
        except KeyError:
            found = str(ident)
        _names[key] = text(found)
    return _names[key]


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def entry(real: str, guest: str, st: os.stat_result | None = None) -> dict[str, Any]:
    """What one path is, not following a symlink."""
    st = st or os.lstat(real)
    kind = _kind(st.st_mode)
    target = None
    if kind == "symlink":
        try:
            target = text(os.readlink(real))
        except OSError:
            target = ""
    name = os.path.basename(guest.rstrip("/")) or "/"
    return {"name": text(name), "path": text(guest), "type": kind, "size": st.st_size,
            "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime,
            "owner": _name("u", st.st_uid), "group": _name("g", st.st_gid), "target": target}


def list_dir(real: str, guest: str, depth: int, max_entries: int) -> Iterator[dict[str, Any]]:
    """The entries under a directory, to `depth` levels (1: its own entries), depth first
    with names sorted, symlinks below it not followed; at most max_entries of them."""
    depth = max(1, min(depth, MAX_DEPTH))
    budget = [max(0, min(max_entries, MAX_ENTRIES + 1))]  # one more: was it all?
    yield from _walk(real, guest.rstrip("/"), depth, budget, top=True)


def _walk(real: str, guest: str, depth: int, budget: list[int],
          top: bool = False) -> Iterator[dict[str, Any]]:
    try:
        with os.scandir(real) as it:
            children = sorted(it, key=lambda e: e.name)
    except OSError:
        if top:
            raise
        return  # a subdirectory that cannot be read (or went away): skipped
    for child in children:
        if budget[0] <= 0:
            return
        child_guest = f"{guest}/{child.name}"
        try:
            info = entry(child.path, child_guest, child.stat(follow_symlinks=False))
        except FileNotFoundError:  # removed while we looked
            continue
        budget[0] -= 1
        yield info
        if depth > 1 and info["type"] == "dir":
            yield from _walk(child.path, child_guest, depth - 1, budget)


def write_file(real: str, data: bytes, mode: int, append: bool) -> None:
    os.makedirs(os.path.dirname(real) or "/", exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(real, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if not append:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def read_file(real: str, offset: int, length: int) -> tuple[bytes, int]:
    """Up to `length` bytes from offset, and the file's size."""
    with open(real, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(offset)
        return fh.read(length), size


def make_dir(real: str, parents: bool) -> bool:
    """Whether it was made (False: it was there already as a directory)."""
    if os.path.isdir(real):
        return False
    if parents:
        os.makedirs(real, mode=0o755, exist_ok=True)
    else:
        os.mkdir(real, 0o755)
    return True


def remove(real: str, guest: str, recursive: bool) -> None:
    if guest.rstrip("/") == "":
        raise PermissionError(errno.EPERM, "Refusing to remove the root directory", guest)
    st = os.lstat(real)
    if stat.S_ISDIR(st.st_mode):
        if recursive:
            shutil.rmtree(real)
        else:
            os.rmdir(real)
    else:
        os.unlink(real)


def move(real_src: str, real_dst: str) -> None:
    """A rename; across filesystems, a copy then a removal."""
    try:
        os.rename(real_src, real_dst)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        shutil.move(real_src, real_dst)


class FileOps:
    """The agent's file requests (a base of Agent, which sends and maps guest paths)."""

    def _send(self, msg: dict[str, Any]) -> None:
        raise NotImplementedError

    def _path(self, path: str) -> str:
        raise NotImplementedError

    def _op_write_file(self, req: int, msg: dict[str, Any]) -> None:
        path = self._path(field(msg, "path", str))
        data = field(msg, "data", bytes, b"") or b""
        mode = field(msg, "mode", int, 0o644)
        write_file(path, data, mode, bool(field(msg, "append", bool, False)))
        self._send({"ev": "ok", "id": req})

    def _op_read_file(self, req: int, msg: dict[str, Any]) -> None:
        path = self._path(field(msg, "path", str))
        offset = field(msg, "offset", int, 0)
        length = min(field(msg, "length", int, wire.CHUNK_BYTES), wire.CHUNK_BYTES)
        data, size = read_file(path, offset, length)
        self._send({"ev": "data", "id": req, "data": data, "eof": len(data) < length, "size": size})

    def _op_stat(self, req: int, msg: dict[str, Any]) -> None:
        guest = field(msg, "path", str)
        self._send({"ev": "entry", "id": req, "entry": entry(self._path(guest), guest)})

    def _op_list_dir(self, req: int, msg: dict[str, Any]) -> None:
        """Entries in frames of about LISTING_BATCH_BYTES, then `done` (truncated: there
        were more than max_entries)."""
        guest = field(msg, "path", str)
        depth = field(msg, "depth", int, 1)
        most = min(field(msg, "max_entries", int, MAX_ENTRIES), MAX_ENTRIES)
        batch: list[dict[str, Any]] = []
        size = count = 0
        truncated = False
        for info in list_dir(self._path(guest), guest, depth, most + 1):
            if count == most:
                truncated = True
                break
            batch.append(info)
            count += 1
            size += 160 + len(info["path"]) + len(info["name"]) + len(info["target"] or "")
            if size >= LISTING_BATCH_BYTES:
                self._send({"ev": "entries", "id": req, "entries": batch})
                batch, size = [], 0
        if batch:
            self._send({"ev": "entries", "id": req, "entries": batch})
        self._send({"ev": "done", "id": req, "count": count, "truncated": truncated})

    def _op_mkdir(self, req: int, msg: dict[str, Any]) -> None:
        path = self._path(field(msg, "path", str))
        created = make_dir(path, bool(field(msg, "parents", bool, False)))
        self._send({"ev": "ok", "id": req, "created": created})

    def _op_remove(self, req: int, msg: dict[str, Any]) -> None:
        guest = field(msg, "path", str)
        remove(self._path(guest), guest, bool(field(msg, "recursive", bool, False)))
        self._send({"ev": "ok", "id": req})

    def _op_move(self, req: int, msg: dict[str, Any]) -> None:
        src, dst = field(msg, "src", str), field(msg, "dst", str)
        move(self._path(src), self._path(dst))
        self._send({"ev": "entry", "id": req, "entry": entry(self._path(dst), dst)})
