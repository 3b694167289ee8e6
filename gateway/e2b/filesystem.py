"""E2B's `filesystem.Filesystem` service (Connect RPC, JSON) over the guest's file operations
(nodeagent/interactive.py, checked on the host by nodeagent/guest_files.py): Stat, ListDir,
MakeDir, Remove, Move. Watching directories is not supported (tryfleet's guest agent reports
no file events): those calls answer UNIMPLEMENTED.

Semantics follow E2B's daemon: MakeDir makes the parents too and answers ALREADY_EXISTS for a
directory that is there (the SDKs return False then); Remove removes a tree, and a path that
is not there is no error; Move makes the destination's parent first; a missing path is
NOT_FOUND (the SDKs raise their FileNotFound error).
"""

from __future__ import annotations

import contextlib
import posixpath
import stat as stat_mod
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from tryfleet.errors import NotFound, TryfleetError
from tryfleet.wire import FileInfo, FileType, Listing, unpack

from ..routes.switches import frozen_sandbox
from . import connect, protojson
from .common import E2BRoute
from .connect import Code, ConnectError
from .envd import RpcTarget, Target, rpc_error

router = APIRouter(route_class=E2BRoute, include_in_schema=False)
MAX_DEPTH = 16
FILE_TYPES = {FileType.FILE: "FILE_TYPE_FILE", FileType.DIR: "FILE_TYPE_DIRECTORY",
              FileType.SYMLINK: "FILE_TYPE_SYMLINK", FileType.OTHER: "FILE_TYPE_UNSPECIFIED"}
_KIND_LETTER = {FileType.DIR: "d", FileType.SYMLINK: "L", FileType.FILE: "-",
                FileType.OTHER: "?"}


def permissions(kind: FileType, mode: int) -> str:
    """Go's os.FileMode.String() for the type and permission bits, as E2B's daemon writes it
    (`-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`)."""
    bits = stat_mod.filemode(mode & 0o777)[1:]
    return _KIND_LETTER[kind] + bits


def entry_json(f: FileInfo) -> dict[str, Any]:
    """E2B's EntryInfo. A symlink is reported as itself (not followed), with its target."""
    link = f.type is FileType.SYMLINK
    return protojson.message_json(
        keep=("symlink_target",) if f.target is not None else (),
        name=f.name, type=FILE_TYPES[f.type], path=f.path,
        size=protojson.int64(f.size) if f.size else 0, mode=f.mode,
        permissions=permissions(f.type, f.mode), owner=f.owner, group=f.group,
        modified_time=protojson.timestamp(f.mtime), symlink_target=f.target, is_symlink=link)


async def _stat(t: Target, msg: dict[str, Any]) -> dict[str, Any]:
    info = unpack(FileInfo, await t.node("sandbox_stat", t.path(protojson.text(msg, "path"))))
    return {"entry": entry_json(info)}


async def _list_dir(t: Target, msg: dict[str, Any]) -> dict[str, Any]:
    depth = protojson.integer(msg, "depth", protojson.UINT32) or 1
    if depth > MAX_DEPTH:
        raise ConnectError(Code.INVALID_ARGUMENT, f"depth must be at most {MAX_DEPTH}")
    where = t.path(protojson.text(msg, "path"))
    got = unpack(Listing, await t.node("sandbox_list_dir", where, depth))
    return {"entries": [entry_json(e) for e in got.entries]}


async def _make_dir(t: Target, msg: dict[str, Any]) -> dict[str, Any]:
    where = t.path(protojson.text(msg, "path"))
    if not await t.node("sandbox_mkdir", where, True):
        raise ConnectError(Code.ALREADY_EXISTS, f"directory '{where}' already exists")
    await t.give(where)
    return {}  # E2B's answer may hold the entry; its SDKs read none (one guest call saved)


async def _remove(t: Target, msg: dict[str, Any]) -> dict[str, Any]:
    where = t.path(protojson.text(msg, "path"))
    if where == "/":
        raise ConnectError(Code.INVALID_ARGUMENT, "the root directory cannot be removed")
    with contextlib.suppress(NotFound):  # removing what is not there leaves it not there
        await t.node("sandbox_remove", where, True)
    return {}


async def _move(t: Target, msg: dict[str, Any]) -> dict[str, Any]:
    src = t.path(protojson.text(msg, "source"), "source")
    dst = t.path(protojson.text(msg, "destination"), "destination")
    await t.node("sandbox_mkdir", posixpath.dirname(dst), True)
    return {"entry": entry_json(unpack(FileInfo, await t.node("sandbox_move", src, dst)))}


Method = Callable[[Target, dict[str, Any]], Awaitable[dict[str, Any]]]
METHODS: dict[str, Method] = {"Stat": _stat, "ListDir": _list_dir, "MakeDir": _make_dir,
                              "Remove": _remove, "Move": _move}
CHANGES = ("MakeDir", "Remove", "Move")
WATCHERS = ("WatchDir", "CreateWatcher", "GetWatcherEvents", "RemoveWatcher")


@router.post("/filesystem.Filesystem/{method}")
async def filesystem(method: str, target: RpcTarget, request: Request) -> Response:
    if method in WATCHERS:
        err = connect.unimplemented("watching directories", "tryfleet's guest agent reports "
                                    "no file events; list the directory again instead")
        if method == "WatchDir":  # a server stream: the error ends the stream
            return connect.stream_answer(_only(connect.end_of_stream(err)))
        raise err
    handler = METHODS.get(method)
    if handler is None:
        raise ConnectError(Code.UNIMPLEMENTED, f"filesystem.Filesystem has no method {method!r}")
    msg = await connect.unary_request(request)
    try:
        if method in CHANGES:
            frozen_sandbox(request, target.box.id, "changing files")
        return connect.unary_answer(await handler(target, msg))
    except TryfleetError as err:
        raise rpc_error(err) from None


async def _only(frame: bytes) -> Any:
    yield frame


__all__ = ["METHODS", "entry_json", "permissions", "router"]
