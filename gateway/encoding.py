"""Output bytes in JSON: with "text", UTF-8 with invalid bytes replaced by U+FFFD (readable,
lossy); with "base64", the base64 of the raw bytes (lossless). Requests choose with
`encoding` (a body field) or `?encoding=`."""

from __future__ import annotations

import base64
from typing import Literal

Encoding = Literal["text", "base64"]


def encode(data: bytes, encoding: Encoding) -> str:
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    return data.decode("utf-8", errors="replace")


__all__ = ["Encoding", "encode"]
