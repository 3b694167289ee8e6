"""Connect RPC, server side, with the JSON codec: as much of https://connectrpc.com/docs/protocol
as E2B's in-sandbox daemon protocol uses.

- Unary: `POST /pkg.Service/Method`, `Content-Type: application/json`, the request message as
  the body; the answer a JSON body with 200, or an error: an HTTP status by its code and
  `{"code": "not_found", "message": "..."}`.
- Server stream: the request one enveloped message (`application/connect+json`); the answer
  200 and enveloped messages, then an end-of-stream message (flag 0x02) that is `{}` or
  `{"error": {...}}`.
- Client stream: enveloped messages in, one enveloped message and the end-of-stream out.

An envelope is one flags byte, a 4-byte big-endian length, then that many bytes of JSON.
Written by hand, in a page: a Connect server library would bring an ASGI app and a protobuf
runtime of its own for a dozen message shapes, and the gateway already has both halves (HTTP
and JSON).
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

UNARY_TYPE = "application/json"
STREAM_TYPE = "application/connect+json"
FLAG_COMPRESSED = 0x01
FLAG_END = 0x02
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_HEADER = struct.Struct(">BI")


class Code(enum.StrEnum):
    CANCELED = "canceled"
    UNKNOWN = "unknown"
    INVALID_ARGUMENT = "invalid_argument"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    FAILED_PRECONDITION = "failed_precondition"
    ABORTED = "aborted"
    OUT_OF_RANGE = "out_of_range"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"


HTTP_STATUS: dict[Code, int] = {
    Code.CANCELED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429, Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401,
}


class ConnectError(Exception):
    """An RPC that failed: its code and a message that says what to do."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


def unimplemented(what: str, why: str) -> ConnectError:
    return ConnectError(Code.UNIMPLEMENTED, f"{what} is not supported by tryfleet: {why}")


# ---- envelopes -------------------------------------------------------------------------------
def envelope(message: Mapping[str, Any], *, end: bool = False) -> bytes:
    """One message (or, with end, the end-of-stream message) framed."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(FLAG_END if end else 0, len(body)) + body


def end_of_stream(error: ConnectError | None = None) -> bytes:
    return envelope({} if error is None else {"error": error.to_json()}, end=True)


class EnvelopeReader:
    """Enveloped messages out of a request body fed in pieces of any size."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= _HEADER.size:
            flags, size = _HEADER.unpack_from(self._buf)
            if flags & FLAG_COMPRESSED:
                raise ConnectError(Code.INTERNAL, "compressed messages are not accepted: "
                                   "send them uncompressed (identity)")
            if flags & FLAG_END:
                raise ConnectError(Code.INVALID_ARGUMENT, "a request stream carries no "
                                   "end-of-stream message")
            if size > self._max:
                raise ConnectError(Code.RESOURCE_EXHAUSTED, f"a message of {size} bytes is "
                                   f"over the limit of {self._max}")
            if len(self._buf) < _HEADER.size + size:
                break
            body = bytes(self._buf[_HEADER.size:_HEADER.size + size])
            del self._buf[:_HEADER.size + size]
            out.append(decode(body))
        return out

    def close(self) -> None:
        """The body ended: nothing may be left over."""
        if self._buf:
            raise ConnectError(Code.INVALID_ARGUMENT, f"the request body ends inside a "
                               f"message ({len(self._buf)} bytes left over)")


def decode(body: bytes) -> dict[str, Any]:
    """A JSON message: an object (an empty body is the empty message)."""
    if not body.strip():
        return {}
    try:
        msg = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConnectError(Code.INVALID_ARGUMENT, f"the message is not JSON: {err}") from None
    if not isinstance(msg, dict):
        raise ConnectError(Code.INVALID_ARGUMENT, "a message must be a JSON object")
    return msg


# ---- reading requests ------------------------------------------------------------------------
def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def unary_request(request: Request) -> dict[str, Any]:
    if _media_type(request) != UNARY_TYPE:
        raise ConnectError(Code.INVALID_ARGUMENT, f"a unary call's Content-Type must be "
                           f"{UNARY_TYPE} (the JSON codec), got {_media_type(request)!r}")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_MESSAGE_BYTES:
            raise ConnectError(Code.RESOURCE_EXHAUSTED, f"the message is over "
                               f"{MAX_MESSAGE_BYTES} bytes")
    return decode(bytes(body))


async def stream_messages(request: Request) -> AsyncIterator[dict[str, Any]]:
    """The messages of a streaming call's request body, each as it arrives."""
    if _media_type(request) != STREAM_TYPE:
        raise ConnectError(Code.INVALID_ARGUMENT, f"a streaming call's Content-Type must be "
                           f"{STREAM_TYPE}, got {_media_type(request)!r}")
    reader = EnvelopeReader()
    async for piece in request.stream():
        for msg in reader.feed(piece):
            yield msg
    reader.close()


async def single_message(request: Request) -> dict[str, Any]:
    """The one message of a server-streaming call's request."""
    got = [msg async for msg in stream_messages(request)]
    if len(got) != 1:
        raise ConnectError(Code.INVALID_ARGUMENT, f"a server-streaming call takes exactly one "
                           f"request message, got {len(got)}")
    return got[0]


def timeout_s(request: Request) -> float | None:
    """The caller's deadline (Connect-Timeout-Ms), in seconds; None when it set none."""
    raw = request.headers.get("connect-timeout-ms")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 10:
        raise ConnectError(Code.INVALID_ARGUMENT, f"Connect-Timeout-Ms must be a positive "
                           f"number of at most 10 digits, got {raw[:20]!r}")
    return int(raw) / 1000 if int(raw) > 0 else None


# ---- answers ---------------------------------------------------------------------------------
def unary_answer(message: Mapping[str, Any]) -> Response:
    return Response(json.dumps(message, separators=(",", ":")), media_type=UNARY_TYPE)


def error_answer(err: ConnectError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(err.to_json()), status_code=HTTP_STATUS[err.code],
                    media_type=UNARY_TYPE, headers=dict(headers or {}))


def stream_answer(frames: AsyncIterator[bytes]) -> StreamingResponse:
    """200 and the frames as they come; `frames` ends with an end-of-stream message."""
    return StreamingResponse(frames, media_type=STREAM_TYPE)


__all__ = ["FLAG_END", "HTTP_STATUS", "MAX_MESSAGE_BYTES", "STREAM_TYPE", "UNARY_TYPE", "Code",
           "ConnectError", "EnvelopeReader", "decode", "end_of_stream", "envelope",
           "error_answer", "single_message", "stream_answer", "stream_messages", "timeout_s",
           "unary_answer", "unary_request", "unimplemented"]
