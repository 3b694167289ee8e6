"""/v1/sandboxes/{id}/files: upload and download raw bytes, list a directory. Paths must be
absolute and normalised (no `..`): refused with 400 before anything reaches the guest.

Both directions stream: an upload goes to the guest in chunks as the body arrives (a body
larger than one chunk is written beside the target and moved into place once whole, so a
failed upload leaves no half file), a download leaves in chunks as the guest reads them; the
gateway never holds more than a chunk of either. Neither may pass the app's MAX_BODY_BYTES.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tryfleet.audit import Digest, Digester
from tryfleet.errors import TryfleetError
from tryfleet.masking import StreamMasker
from tryfleet.scheduler.sandboxes import SandboxRecord
from tryfleet.wire import FileInfo, FileType, Listing, unpack

from ..auditing import FileMove, call_of
from ..exposure import mask_values
from ..problems import Problem, documented
from .sandboxes import OpenBox, ReadableBox, check_path, on_node, utf8

router = APIRouter(prefix="/v1/sandboxes", tags=["files"])
CHUNK_BYTES = 4 * 1024 * 1024
NodeCall = Callable[..., Awaitable[Any]]  # (method, *args) on the node holding one sandbox
GuestPath = Annotated[str, Query(min_length=1, max_length=4096,
                                 description="absolute and normalised, e.g. /root/out.txt")]
Mode = Annotated[str, Query(pattern=r"^0?[0-7]{3,4}$", description="octal, e.g. 0644")]


def max_body_bytes() -> int:
    from ..app import MAX_BODY_BYTES

    return MAX_BODY_BYTES


class Written(BaseModel):
    path: str
    size: int = Field(description="bytes written")
    sha256: str = Field(description="of the bytes written, hex")


class Entry(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int = Field(description="permission bits (0o7777 at most)")
    mtime: float = Field(description="seconds since the epoch, by the guest's clock")
    owner: str
    group: str
    target: str | None = Field(description="where a symlink points")


class DirListing(BaseModel):
    path: str
    entries: list[Entry]
    truncated: bool = Field(description="there were more entries than a listing holds")


def _entry(f: FileInfo) -> Entry:
    return Entry(name=f.name, path=f.path, type=f.type.value, size=f.size, mode=f.mode,
                 mtime=f.mtime, owner=f.owner, group=f.group, target=f.target)


def _path(path: str) -> str:
    utf8("path", path)
    return check_path(path)


@router.put("/{sid}/files", summary="Upload a file (the raw body is its content)",
            responses=documented(400, 401, 403, 404, 413, 422, 503),
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}})
async def upload(box: OpenBox, request: Request, path: GuestPath,
                 mode: Mode = "0644") -> Written:
    if _path(path) == "/":
        raise Problem(400, "bad-path", "path '/' is a directory: name a file")
    return await write_stream(_caller(request, box), path, request.stream(), int(mode, 8),
                              FileMove(call_of(request), box))


def _caller(request: Request, box: SandboxRecord) -> NodeCall:
    async def call(method: str, *args: Any) -> Any:
        return await on_node(request, box, method, *args)
    return call


async def write_stream(node: NodeCall, path: str, body: AsyncIterator[bytes],
                       bits: int = 0o644, audit: FileMove | None = None) -> Written:
    """The bytes of `body` written to `path` in a sandbox as they arrive, through `node` (a
    call to the node agent holding it): at once when they fit one chunk, else beside it and
    moved into place once whole (a failed upload leaves no half file). `audit`: file.write
    recorded (size, SHA-256) before the file appears at `path`."""
    digest, size = hashlib.sha256(), 0
    pending = bytearray()
    spare: str | None = None  # where a body larger than a chunk is written first
    try:
        async for piece in body:
            digest.update(piece)
            size += len(piece)
            pending += piece
            if len(pending) >= CHUNK_BYTES:
                if spare is None:
                    spare = posixpath.join(posixpath.dirname(path),
                                           f".tfup-{secrets.token_hex(6)}")
                await node("sandbox_write", spare, bytes(pending), bits, size > len(pending))
                pending.clear()
        whole = Digest(size, digest.hexdigest())
        if spare is None:
            if audit is not None:
                await audit.writing(path, whole)
            await node("sandbox_write", path, bytes(pending), bits, False)
        else:
            await node("sandbox_write", spare, bytes(pending), bits, True)
            if audit is not None:
                await audit.writing(path, whole)
            await node("sandbox_move", spare, path)
    except BaseException:
        if spare is not None:
            with contextlib.suppress(TryfleetError, Problem):  # missing, or the sandbox gone
                await node("sandbox_remove", spare, False)
        raise
    return Written(path=path, size=size, sha256=whole.sha256)


@router.get("/{sid}/files", summary="Download a file (its raw bytes)",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}},
                "description": "the file's bytes"},
                **documented(400, 401, 403, 404, 413, 422, 503)})
async def download(box: ReadableBox, request: Request, path: GuestPath) -> StreamingResponse:
    node = _caller(request, box)
    info = unpack(FileInfo, await node("sandbox_stat", _path(path)))
    if info.type is FileType.DIR:
        raise Problem(400, "bad-path", f"{path!r} is a directory: list it with files/list")
    if info.type is FileType.OTHER:
        raise Problem(400, "bad-path", f"{path!r} is not a regular file")
    return StreamingResponse(await read_stream(node, path, info.size,
                                               FileMove(call_of(request), box),
                                               mask_values(request, box.tenant)),
                             media_type="application/octet-stream")


async def read_stream(node: NodeCall, path: str, size: int,
                      audit: FileMove | None = None, values: Sequence[bytes] = ()
                      ) -> AsyncIterator[bytes]:
    """The bytes of the file at `path` (of `size` bytes by its stat) in chunks as the guest
    reads them: the first chunk read before this returns (so that a file that cannot be read
    fails before an answer starts), the rest as they are taken. Too large (413) when over
    the app's MAX_BODY_BYTES. `audit`: file.read recorded before the first bytes leave (with
    the SHA-256 of the whole when it is one chunk; else again once all was sent). `values`:
    the tenant's secrets, each occurrence masked in what is sent (the digest is the file's)."""
    most = max_body_bytes()
    if size > most:
        raise Problem(413, "too-large", f"{path!r} is {size} bytes, over the "
                      f"{most}-byte limit of one download")
    first: bytes = await node("sandbox_read", path, 0, CHUNK_BYTES)
    whole = len(first) < CHUNK_BYTES
    if audit is not None:
        await audit.reading(path, Digest.of(first) if whole else Digest(size, ""), whole)

    masker = StreamMasker(values)

    async def rest() -> AsyncIterator[bytes]:
        yield masker.feed(first)
        got, data = len(first), first
        sent = Digester()
        sent.update(first)
        while len(data) == CHUNK_BYTES and got < most:
            data = await node("sandbox_read", path, got, min(CHUNK_BYTES, most - got))
            got += len(data)
            sent.update(data)
            yield masker.feed(data)
        tail = masker.flush()
        if tail:
            yield tail
        if audit is not None and not whole:
            audit.read_all(path, sent.digest())

    return rest()


@router.delete("/{sid}/files", status_code=204, summary="Remove a file (a directory: "
               "with recursive=true)", responses=documented(400, 401, 403, 404, 409, 422, 503))
async def remove(box: OpenBox, request: Request, path: GuestPath,
                 recursive: Annotated[bool, Query(description="a directory and all in it")]
                 = False) -> None:
    where = _path(path)
    if where == "/":
        raise Problem(400, "bad-path", "the root directory cannot be removed")
    node = _caller(request, box)
    info = unpack(FileInfo, await node("sandbox_stat", where))
    if info.type is FileType.DIR and not recursive:
        raise Problem(409, "is-a-directory", f"{path!r} is a directory: remove it with "
                      "recursive=true")
    await node("sandbox_remove", where, recursive)


@router.get("/{sid}/files/list", summary="List a directory",
            responses=documented(400, 401, 403, 404, 422, 503))
async def list_files(box: ReadableBox, request: Request, path: GuestPath,
                     depth: Annotated[int, Query(ge=1, le=16, description="levels")] = 1
                     ) -> DirListing:
    got = unpack(Listing, await on_node(request, box, "sandbox_list_dir", _path(path), depth))
    return DirListing(path=path, entries=[_entry(e) for e in got.entries],
                      truncated=got.truncated)


__all__ = ["CHUNK_BYTES", "DirListing", "Entry", "NodeCall", "Written", "read_stream", "router",
           "write_stream"]
