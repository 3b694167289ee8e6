"""The codec of tryfleet.wire (import it from there): records as msgpack bytes and back, each
field's type checked on the way in. Nothing is pickled.

Written by hand, not with a validation library: it runs for every attempt on the dispatch path
(thousands a second), so each record type's decoder is built once from its type hints and then
only checks and copies; where a value is wrong is worked out only when one is.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import msgpack

from .errors import TryfleetError

T = TypeVar("T")


class WireError(TryfleetError, ValueError):
    """Bytes that do not decode to the record they should be; the message names the field."""


def pack(value: Any) -> bytes:
    """A record, or a list or str-keyed dict of records, as msgpack bytes."""
    packed: bytes = msgpack.packb(value, use_bin_type=True, default=_default)
    return packed


def unpack(cls: type[T], data: bytes) -> T:
    got: T = _run(_decoder(cls), _load(data), cls.__name__)
    return got


def unpack_list(cls: type[T], data: bytes) -> list[T]:
    raw = _load(data)
    if not isinstance(raw, list):
        raise WireError(f"expected a list of {cls.__name__}, got {type(raw).__name__}")
    decode = _decoder(cls)
    out = []
    for n, item in enumerate(raw):
        out.append(_run(decode, item, f"{cls.__name__}[{n}]"))
    return out


def unpack_map(cls: type[T], data: bytes) -> dict[str, T]:
    raw = _load(data)
    if not isinstance(raw, dict):
        raise WireError(f"expected a map of {cls.__name__}, got {type(raw).__name__}")
    decode = _decoder(cls)
    return {str(k): _run(decode, v, f"{cls.__name__}[{k!r}]") for k, v in raw.items()}


def _load(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as err:
        raise WireError(f"not a msgpack message: {err}") from None


def _default(value: Any) -> Any:
    """What msgpack does not know: a record is a map of its fields, an enum its value."""
    cls = type(value)
    fields = _FIELDS.get(cls)
    if fields is None and dataclasses.is_dataclass(cls):
        fields = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    if fields is not None:
        return {name: getattr(value, name) for name in fields}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot put a {type(value).__name__} on the wire")


class _Bad(Exception):
    """A value that does not fit; `path` grows (innermost first) on its way out."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []

    def at(self, step: str) -> _Bad:
        self.path.append(step)
        return self


Decoder = Callable[[Any], Any]
_DECODERS: dict[Any, Decoder] = {}  # type hint -> its decoder, built on first use
_FIELDS: dict[type, tuple[str, ...]] = {}  # record type -> its field names


def _run(decode: Decoder, raw: Any, where: str) -> Any:
    try:
        return decode(raw)
    except _Bad as bad:
        raise WireError(f"{where}{''.join(reversed(bad.path))}: {bad.problem}") from None


def _decoder(tp: Any) -> Decoder:
    """A function that checks a raw msgpack value against type `tp` and builds it."""
    found = _DECODERS.get(tp)
    if found is None:
        found = _DECODERS[tp] = _build(tp)
    return found


def _build(tp: Any) -> Decoder:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(typing.get_args(tp))
    if origin is tuple:
        return _tuple(typing.get_args(tp))
    if origin is dict:
        return _dict(*typing.get_args(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if tp is float:
        return _float
    if tp in (str, int, bytes, bool):
        return _exactly(tp)
    if tp is Any:
        return lambda raw: raw
    raise TypeError(f"no wire decoder for {tp!r}")


def _got(raw: Any) -> str:
    return type(raw).__name__


def _exactly(tp: type) -> Decoder:
    def decode(raw: Any) -> Any:
        if type(raw) is not tp:
            raise _Bad(f"expected {tp.__name__}, got {_got(raw)}")
        return raw
    return decode


def _float(raw: Any) -> float:
    if type(raw) is float:
        return raw
    if type(raw) is int:
        return float(raw)
    raise _Bad(f"expected float, got {_got(raw)}")


def _enum(tp: type[enum.Enum]) -> Decoder:
    def decode(raw: Any) -> Any:
        try:
            return tp(raw)
        except ValueError:
            raise _Bad(f"{raw!r} is not one of {', '.join(str(m.value) for m in tp)}") from None
    return decode


def _union(options: tuple[Any, ...]) -> Decoder:
    nullable = type(None) in options
    decoders = [_decoder(o) for o in options if o is not type(None)]
    if len(decoders) == 1:
        (only,) = decoders

        def optional(raw: Any) -> Any:
            return None if raw is None and nullable else only(raw)
        return optional

    def decode(raw: Any) -> Any:
        if raw is None and nullable:
            return None
        for option in decoders:
            try:
                return option(raw)
            except _Bad:
                continue
        raise _Bad(f"no type fits {raw!r}")
    return decode


def _items(raw: Any) -> list[Any] | tuple[Any, ...]:
    if type(raw) is not list and type(raw) is not tuple:
        raise _Bad(f"expected a list, got {_got(raw)}")
    return raw


def _tuple(args: tuple[Any, ...]) -> Decoder:
    if len(args) == 2 and args[1] is Ellipsis:
        item = _decoder(args[0])

        def many(raw: Any) -> tuple[Any, ...]:
            out = []
            for n, value in enumerate(_items(raw)):
                try:
                    out.append(item(value))
                except _Bad as bad:
                    raise bad.at(f"[{n}]") from None
            return tuple(out)
        return many
    decoders = [_decoder(a) for a in args]

    def fixed(raw: Any) -> tuple[Any, ...]:
        values = _items(raw)
        if len(values) != len(decoders):
            raise _Bad(f"expected {len(decoders)} items, got {len(values)}")
        out = []
        for n, (decode, value) in enumerate(zip(decoders, values, strict=True)):
            try:
                out.append(decode(value))
            except _Bad as bad:
                raise bad.at(f"[{n}]") from None
        return tuple(out)
    return fixed


def _dict(key_t: Any, val_t: Any) -> Decoder:
    decode_key, decode_value = _decoder(key_t), _decoder(val_t)

    def decode(raw: Any) -> dict[Any, Any]:
        if type(raw) is not dict:
            raise _Bad(f"expected a map, got {_got(raw)}")
        out = {}
        for k, v in raw.items():
            try:
                out[decode_key(k)] = decode_value(v)
            except _Bad as bad:
                raise bad.at(f"[{k!r}]") from None
        return out
    return decode


def _record(cls: type) -> Decoder:
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _decoder(hints[f.name]),
               f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
              for f in dataclasses.fields(cls)]

    def decode(raw: Any) -> Any:
        if type(raw) is not dict:
            raise _Bad(f"expected a {cls.__name__} map, got {_got(raw)}")
        kwargs = {}
        for name, decode_field, required in fields:
            if name in raw:
                try:
                    kwargs[name] = decode_field(raw[name])
                except _Bad as bad:
                    raise bad.at(f".{name}") from None
            elif required:
                raise _Bad(f"field {name!r} is missing")
        return cls(**kwargs)
    return decode


__all__ = ["WireError", "pack", "unpack", "unpack_list", "unpack_map"]
