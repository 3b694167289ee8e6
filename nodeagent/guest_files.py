"""What the guest answers to file operations, checked on the host: every field of every entry
has the type and range it should, names are names, paths are where they were asked for, and
no listing holds more than asked. A guest that answers otherwise is broken or hostile
(GuestProtocolError). The errors a guest reports for a path become the caller's errors
(GuestPathMissing, GuestPathRefused), and so does a user the sandbox lacks (UnknownUser); the
rest are the fleet's (GuestRequestError).
"""

from __future__ import annotations

import math
import posixpath
from typing import Any

from tryfleet.wire import FileInfo, FileType

from .errors import (
    GuestPathMissing,
    GuestPathRefused,
    GuestProtocolError,
    GuestRequestError,
    UnknownUser,
)

MAX_LIST_ENTRIES = 10_000
MAX_NAME_CHARS = 1024  # NAME_MAX is 255 bytes; each byte that is not UTF-8 arrives as U+FFFD
MAX_PATH_CHARS = 16_384
MAX_OWNER_CHARS = 256
MAX_SIZE = 1 << 62
MISSING = frozenset({"ENOENT", "ENOTDIR"})
REFUSED = frozenset({"EEXIST", "EISDIR", "ENOTEMPTY", "EACCES", "EPERM", "EINVAL",
                     "ENAMETOOLONG", "ELOOP", "EXDEV", "ENOSPC", "EROFS", "EBUSY", "EMLINK",
                     "EFBIG", "EDQUOT", "ETXTBSY"})


def refusal(op: str, msg: dict[str, Any]) -> GuestRequestError:
    """The error a guest's `error` event is, by the errno name it gave."""
    text = msg.get("message")
    detail = text[:500] if isinstance(text, str) else repr(text)[:500]
    code = msg.get("code")
    if code in MISSING:
        return GuestPathMissing(f"{op}: {detail}")
    if code in REFUSED:
        return GuestPathRefused(f"{op}: {detail}")
    if code == "unknown_user":
        return UnknownUser(f"{op}: {detail}")
    return GuestRequestError(f"guest refused {op}: {detail}")


def _bad(what: str, raw: Any) -> GuestProtocolError:
    shown = {k: (v[:60] if isinstance(v, str) else v) for k, v in raw.items()} \
        if isinstance(raw, dict) else raw
    return GuestProtocolError(f"guest sent a bad {what}: {repr(shown)[:300]}")


def _text(raw: dict[str, Any], key: str, most: int) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or len(value) > most or "\x00" in value:
        raise _bad(f"{key} in a file entry", raw)
    return value


def _number(raw: dict[str, Any], key: str, least: float, most: float) -> Any:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or not least <= value <= most:
        raise _bad(f"{key} in a file entry", raw)
    return value


def file_info(raw: Any, *, path: str | None = None, under: str | None = None) -> FileInfo:
    """One entry as the guest sent it, checked: at exactly `path` (a stat), or directly or
    deeper below the directory `under` (a listing)."""
    if not isinstance(raw, dict):
        raise _bad("file entry", raw)
    name = _text(raw, "name", MAX_NAME_CHARS)
    where = _text(raw, "path", MAX_PATH_CHARS)
    kind_raw = raw.get("type")
    if kind_raw not in {t.value for t in FileType}:
        raise _bad("type in a file entry", raw)
    kind = FileType(kind_raw)
    size = _number(raw, "size", 0, MAX_SIZE)
    mode = _number(raw, "mode", 0, 0o7777)
    mtime = _number(raw, "mtime", -1e12, 1e12)
    if not isinstance(size, int) or not isinstance(mode, int):
        raise _bad("size or mode in a file entry", raw)
    target = raw.get("target")
    if target is not None:
        target = _text(raw, "target", MAX_PATH_CHARS)
    normal = where == "/" or (where.startswith("/") and posixpath.normpath(where) == where)
    if path is not None:
        ok = normal and where.rstrip("/") == path.rstrip("/") and (
            name == posixpath.basename(where) or (where == "/" and name == "/"))
    else:
        base = (under or "/").rstrip("/") + "/"
        ok = normal and where.startswith(base) and name == posixpath.basename(where) and \
            name not in ("", ".", "..") and "/" not in name
    if not ok:
        raise _bad(f"name or path in a file entry (asked for {path or under!r})", raw)
    return FileInfo(name, where, kind, size, mode, float(mtime),
                    _text(raw, "owner", MAX_OWNER_CHARS) if "owner" in raw else "",
                    _text(raw, "group", MAX_OWNER_CHARS) if "group" in raw else "", target)


__all__ = ["MAX_LIST_ENTRIES", "file_info", "refusal"]
