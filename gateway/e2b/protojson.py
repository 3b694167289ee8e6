"""Proto3's JSON mapping (https://protobuf.dev/programming-guides/json/), as far as E2B's
in-sandbox messages need it, both ways.

Reading, as a conforming parser must: a field by its lowerCamelCase JSON name or its proto
name; 64-bit integers as numbers or decimal strings; bytes as standard or URL-safe base64,
padded or not; enums by name or number; null as the field's default. Anything else is
INVALID_ARGUMENT naming the field.

Writing, as E2B's daemon does: lowerCamelCase names, int64 as strings, enums by name, bytes
as standard base64, timestamps as RFC 3339 in UTC, and fields at their default left out
(`message` drops them; a field with explicit presence is kept by passing it to `keep`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from .connect import Code, ConnectError

_CAMEL = re.compile(r"_([a-z0-9])")
MAX_TEXT = 1 << 20
INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)


def _bad(name: str, want: str, got: Any) -> ConnectError:
    return ConnectError(Code.INVALID_ARGUMENT, f"field {name!r} must be {want}, got "
                        f"{repr(got)[:80]}")


def json_name(name: str) -> str:
    return _CAMEL.sub(lambda m: m[1].upper(), name)


def field(msg: Mapping[str, Any], name: str) -> Any:
    """The value of field `name` (its proto name, snake_case), under either of its names."""
    value = msg.get(json_name(name))
    return msg.get(name) if value is None else value


def text(msg: Mapping[str, Any], name: str, default: str = "",
         most: int = MAX_TEXT) -> str:
    value = field(msg, name)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > most or "\x00" in value:
        raise _bad(name, f"a string of at most {most} characters without NUL", value)
    return value


def optional_text(msg: Mapping[str, Any], name: str, most: int = MAX_TEXT) -> str | None:
    return text(msg, name, most=most) if field(msg, name) is not None else None


def integer(msg: Mapping[str, Any], name: str, bounds: tuple[int, int] = INT32,
            default: int = 0) -> int:
    value = field(msg, name)
    if value is None:
        return default
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,20}", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or \
            not bounds[0] <= value <= bounds[1]:
        raise _bad(name, f"an integer from {bounds[0]} to {bounds[1]}", value)
    return value


def boolean(msg: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = field(msg, name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, "true or false", value)
    return value


def message(msg: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = field(msg, name)
    if value is not None and not isinstance(value, dict):
        raise _bad(name, "an object", value)
    return value


def strings(msg: Mapping[str, Any], name: str, most: int = 4096,
            most_chars: int = MAX_TEXT) -> list[str]:
    value = field(msg, name)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > most or not all(
            isinstance(v, str) and len(v) <= most_chars and "\x00" not in v for v in value):
        raise _bad(name, f"a list of at most {most} strings without NUL", value)
    return value


def string_map(msg: Mapping[str, Any], name: str, most: int = 4096) -> dict[str, str]:
    value = field(msg, name)
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > most or not all(
            isinstance(v, str) and "\x00" not in k + v for k, v in value.items()):
        raise _bad(name, f"an object of at most {most} string values without NUL", value)
    return value


def data(msg: Mapping[str, Any], name: str) -> bytes:
    value = field(msg, name)
    if value is None:
        return b""
    if not isinstance(value, str):
        raise _bad(name, "base64 text", value)
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/") +
                                "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(name, "base64 text", value) from None


def enum(msg: Mapping[str, Any], name: str, values: Mapping[str, int]) -> int:
    """An enum's number, given by name or number (one of `values`); 0 when absent."""
    value = field(msg, name)
    if value is None:
        return 0
    if isinstance(value, str) and value in values:
        return values[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in values.values():
        return value
    raise _bad(name, f"one of {', '.join(values)}", value)


def oneof(msg: Mapping[str, Any], *names: str) -> tuple[str, Any] | None:
    """Which field of a oneof is set, and its value; None when none; two set is refused."""
    found = [(n, field(msg, n)) for n in names if field(msg, n) is not None]
    if len(found) > 1:
        raise ConnectError(Code.INVALID_ARGUMENT, f"set only one of {', '.join(names)}")
    return found[0] if found else None


# ---- writing ---------------------------------------------------------------------------------
def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def int64(value: int) -> str:
    return str(int(value))


def timestamp(epoch_s: float) -> str:
    """RFC 3339 in UTC, with 0, 3, 6 or 9 fractional digits, as proto3 writes them."""
    when = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
    frac = when.microsecond
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    if frac == 0:
        return base + "Z"
    if frac % 1000 == 0:
        return f"{base}.{frac // 1000:03d}Z"
    return f"{base}.{frac:06d}Z"


def _is_default(value: Any) -> bool:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value == 0
    return value in ("", {}, [])


def message_json(keep: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    """A message: fields by their proto names, written by their JSON names, those at their
    default (None, 0, "", False, empty) left out unless named in `keep` (explicit presence)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name not in keep and _is_default(value):
            continue
        out[json_name(name)] = value
    return out


__all__ = ["INT32", "UINT32", "b64", "boolean", "data", "enum", "field", "int64", "integer",
           "json_name", "message", "message_json", "oneof", "optional_text", "string_map",
           "strings", "text", "timestamp"]
