"""E2B's in-sandbox HTTP API: `GET /health`, and files down (`GET /files?path=`: the raw
bytes) and up (`POST /files`: one file as the raw body, `application/octet-stream`, or several
as `multipart/form-data` parts named `file` whose filename is the path; a `?path=` names the
one file's path instead). Both stream through the gateway chunk by chunk, as /v1's files do
(routes/sandbox_files.py: an upload larger than a chunk is written beside its path and moved
into place once whole), and both are bounded by the app's MAX_BODY_BYTES.
"""

from __future__ import annotations

import posixpath
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from python_multipart.multipart import MultipartParser, parse_options_header

from tryfleet.wire import FileInfo, FileType, unpack

from ..auditing import FileMove, call_of
from ..exposure import mask_values
from ..routes.sandbox_files import read_stream, write_stream
from ..routes.switches import frozen_sandbox
from .common import ApiError, E2BRoute
from .connect import Code
from .envd import HttpTarget, Target

router = APIRouter(route_class=E2BRoute, include_in_schema=False)
MAX_PARTS = 1000
GuestPath = Annotated[str | None, Query(max_length=4096)]


@router.get("/health", status_code=204)
async def health(target: HttpTarget) -> Response:
    """204 while the sandbox runs (its daemon's answer); 502 once it does not."""
    return Response(status_code=204)


@router.get("/files")
async def download(target: HttpTarget, path: GuestPath = None) -> StreamingResponse:
    where = target.path(path or "")
    info = unpack(FileInfo, await target.node("sandbox_stat", where))
    if info.type is FileType.DIR:
        raise target.refuse(Code.INVALID_ARGUMENT, f"path '{where}' is a directory: list it "
                            "with files.list")
    if info.type is not FileType.FILE and info.type is not FileType.SYMLINK:
        raise target.refuse(Code.INVALID_ARGUMENT, f"path '{where}' is not a regular file")
    name = posixpath.basename(where).replace('"', "")
    return StreamingResponse(await read_stream(target.node, where, info.size,
                                               FileMove(call_of(target.request), target.box,
                                                        "e2b"),
                                               mask_values(target.request, target.box.tenant)),
                             media_type="application/octet-stream",
                             headers={"Content-Disposition": f'inline; filename="{name}"'})


@router.post("/files")
async def upload(target: HttpTarget, request: Request, path: GuestPath = None) -> JSONResponse:
    frozen_sandbox(request, target.box.id, "writing files")
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise ApiError(400, "a multipart/form-data body needs its boundary")
        written = await _upload_parts(target, MultipartFiles(request.stream(), boundary), path)
    else:
        if not path:
            raise ApiError(400, "name the file's path: ?path=/home/user/file.txt")
        written = [await _write(target, target.path(path), _body(request))]
    if not written:
        raise ApiError(400, "the body holds no file: send parts named `file`")
    return JSONResponse([{"name": posixpath.basename(p), "type": "file", "path": p}
                         for p in written])


async def _upload_parts(target: Target, parts: MultipartFiles,
                        path: str | None) -> list[str]:
    written: list[str] = []
    while (part := await parts.next_part()) is not None:
        name, filename = part
        if name != "file":
            await parts.skip()
            continue
        if path and written:
            raise ApiError(400, "?path= names one file: send several without it, each "
                           "part's filename its path")
        where = target.path(path or filename or "", "the part's filename (its path)")
        written.append(await _write(target, where, parts.data()))
        if len(written) > MAX_PARTS:
            raise ApiError(400, f"at most {MAX_PARTS} files at once")
    return written


async def _write(target: Target, where: str, body: AsyncIterator[bytes]) -> str:
    if where == "/":
        raise ApiError(400, "path '/' is a directory: name a file")
    await write_stream(target.node, where, body,
                       audit=FileMove(call_of(target.request), target.box, "e2b"))
    await target.give(where)
    return where


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The raw body, inflated when sent gzip-compressed (the SDKs' `gzip=True`)."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(400, f"Content-Encoding {encoding!r} is not accepted: send gzip or "
                       "nothing")
    inflate = zlib.decompressobj(wbits=31) if encoding == "gzip" else None
    async for piece in request.stream():
        if inflate is None:
            yield piece
            continue
        try:
            yield inflate.decompress(piece)
        except zlib.error as err:
            raise ApiError(400, f"the body is not valid gzip: {err}") from None
    if inflate is not None:
        yield inflate.flush()


class MultipartFiles:
    """The parts of a multipart/form-data body, one after the other, each part's bytes as
    they arrive: python-multipart's push parser turned into pulls, so nothing is spooled."""

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = body.__aiter__()
        self._events: deque[tuple[str, Any]] = deque()
        self._header: list[bytes] = [b"", b""]
        self._headers: dict[bytes, bytes] = {}
        self._done = False

        def mark(kind: str) -> Any:
            return lambda *args: self._events.append((kind, None))

        def piece(kind: str) -> Any:
            return lambda data, start, end: self._events.append((kind, data[start:end]))

        self._parser = MultipartParser(boundary, {
            "on_part_begin": mark("begin"), "on_part_end": mark("end"),
            "on_header_field": piece("field"), "on_header_value": piece("value"),
            "on_header_end": mark("header"), "on_headers_finished": mark("headers"),
            "on_part_data": piece("data")})

    async def _next_event(self) -> tuple[str, Any] | None:
        while not self._events:
            if self._done:
                return None
            chunk = await anext(self._body, None)
            try:
                if chunk is None:
                    self._done = True
                    self._parser.finalize()
                else:
                    self._parser.write(chunk)
            except Exception as err:  # python-multipart's parse errors
                raise ApiError(400, f"the multipart body is malformed: {err}") from None
        return self._events.popleft()

    async def next_part(self) -> tuple[str, str] | None:
        """The next part's form name and filename, once its headers are in; None at the end."""
        self._headers = {}
        while (event := await self._next_event()) is not None:
            kind, value = event
            if kind == "field":
                self._header[0] += value
            elif kind == "value":
                self._header[1] += value
            elif kind == "header":
                self._headers[self._header[0].strip().lower()] = self._header[1].strip()
                self._header = [b"", b""]
            elif kind == "headers":
                _, params = parse_options_header(self._headers.get(b"content-disposition",
                                                                   b""))
                return (params.get(b"name", b"").decode("utf-8", "replace"),
                        params.get(b"filename", b"").decode("utf-8", "replace"))
        return None

    async def data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, to its end."""
        while (event := await self._next_event()) is not None:
            kind, value = event
            if kind == "data":
                if value:
                    yield bytes(value)
            elif kind == "end":
                return
        raise ApiError(400, "the multipart body ends inside a part")

    async def skip(self) -> None:
        async for _ in self.data():
            pass


__all__ = ["MultipartFiles", "router"]
