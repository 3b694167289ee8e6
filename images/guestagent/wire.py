"""Wire format between the host and the guest agent: msgpack maps in length-prefixed frames.

A frame is a 4-byte big-endian length followed by that many bytes of one msgpack map.
Both sides decode with msgpack's safe options only: no pickle, no ext types, no code.
This module is copied into every guest image and imports nothing of the host side.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

__all__ = [
    "CHUNK_BYTES",
    "MAX_FRAME_BYTES",
    "PORT_NAME",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "FrameError",
    "encode",
]

PORT_NAME = "org.tryfleet.agent.0"
PROTOCOL_VERSION = 1
# Largest payload chunk (output, file data) either side puts in one frame.
CHUNK_BYTES = 256 * 1024
# Largest frame either side accepts; a peer sending more is broken or hostile.
MAX_FRAME_BYTES = 1024 * 1024

_HEADER = struct.Struct(">I")


class FrameError(ValueError):
    """The peer sent bytes that are not a well-formed frame."""


def _no_ext(code: int, data: bytes) -> Any:
    raise FrameError(f"msgpack ext type {code} is not allowed on the guest channel")


def encode(msg: dict[str, Any]) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates bytes and yields whole messages; never holds more than one frame's worth."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        return [msg for _, msg in self.feed_sized(data)]

    def feed_sized(self, data: bytes) -> list[tuple[int, dict[str, Any]]]:
        """The whole messages so far, each with the size of its frame in bytes."""
        self._buf += data
        out: list[tuple[int, dict[str, Any]]] = []
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self._max:
                raise FrameError(f"peer announced a frame of {length} bytes (limit {self._max})")
            end = _HEADER.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[_HEADER.size:end])
            del self._buf[:end]
            out.append((end, _decode(body)))
        return out


def _decode(body: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except FrameError:
        raise
    except Exception as err:  # msgpack raises several unrelated types for bad input
        raise FrameError(f"undecodable frame: {err}") from err
    if not isinstance(msg, dict):
        raise FrameError(f"frame holds a {type(msg).__name__}, expected a map")
    return msg
