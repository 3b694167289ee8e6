"""Everything that crosses between the scheduler and the node agents: small frozen records and
their msgpack codec. The scheduler knows the node side only through this module; the node side
never imports the scheduler.

Every record is a frozen dataclass of plain fields (str, int, float, bool, bytes, None, enums,
tuples, str-keyed dicts and other records). `pack(record)` gives msgpack bytes (a map of field
names, so a field added later is ignored by an older reader); `unpack(Type, data)` checks every
field's type on the way in and raises WireError naming the field. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgpack

from .errors import NotFound, TryfleetError

T = TypeVar("T")

# Where the scheduler finds node agents: every actor that implements NodeProtocol (a real
# host's node agent, or a group of simulated hosts) is a named Ray actor under this prefix in
# this namespace. The names live here, beside the protocol, so that the scheduler needs nothing
# of the node side to find its hosts.
NAMESPACE = "tryfleet"
NODE_ACTOR_PREFIX = "tryfleet-node-"


class WireError(TryfleetError, ValueError):
    """Bytes that do not decode to the record they should be; the message names the field."""


class WrongHost(NotFound):
    """A call named a host that the node-agent actor it reached does not serve."""


class State(enum.StrEnum):
    """How an attempt ended, as its host saw it."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # the command ran and failed
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    INFRA_ERROR = "INFRA_ERROR"


class Failure(enum.StrEnum):
    """Why an attempt ended in INFRA_ERROR: decides whether it is tried again."""

    BAD_REQUEST = "bad_request"  # this request can never run as given: not retried
    INFRA = "infra"  # the VM, guest, hypervisor or an image build failed: retried
    LOST = "lost"  # its host does not know the attempt (the node agent restarted): retried
    HOST_LOST = "host_lost"  # its host stopped answering: retried elsewhere


# ---- starting attempts -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ids:
    """The ids that explain an attempt, bound to every log line and record about it."""

    tenant: str = ""
    suite: str = ""
    iteration: str = ""
    attempt: int = 0
    trace_id: str = ""
    host: str = ""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class IterationSpec:
    """One iteration as a host runs it: a fresh VM, files in, one command, files out, VM gone."""

    image: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    stdin: bytes | None = None
    put: tuple[tuple[str, bytes], ...] = ()  # (guest path, content)
    get: tuple[str, ...] = ()  # guest paths to bring back
    timeout_s: float = 600.0
    cpus: int = 1
    mem_mib: int = 512
    disk_mib: int | None = None
    max_output: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StartRequest:
    id: str
    attempt: int
    spec: IterationSpec
    ids: Ids = field(default_factory=Ids)


@dataclass(frozen=True, slots=True)
class AttemptKey:
    id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """An attempt a host knows of, and whether it has ended there."""

    id: str
    attempt: int
    done: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one attempt on its host."""

    id: str
    attempt: int
    state: State
    host: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    started_at: float | None = None  # wall clock, seconds since the epoch
    ended_at: float | None = None
    duration_s: float | None = None  # host monotonic
    error: str | None = None
    failure: Failure | None = None  # set when state is INFRA_ERROR
    vm: str | None = None
    kept_logs: str | None = None

    @property
    def key(self) -> AttemptKey:
        return AttemptKey(self.id, self.attempt)


@dataclass(frozen=True, slots=True)
class Output:
    """Live output of an attempt past the offsets asked for, and whether it has ended."""

    stdout: bytes
    stderr: bytes
    done: bool


# ---- hosts -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Capacity:
    hostname: str
    cpus: int
    mem_mib: int
    disk_free_mib: int


@dataclass(frozen=True, slots=True)
class Pressure:
    """PSI averages over 10 s (percent of time stalled) and memory in use, in percent."""

    cpu_some_avg10: float = 0.0
    memory_some_avg10: float = 0.0
    memory_full_avg10: float = 0.0
    io_some_avg10: float = 0.0
    io_full_avg10: float = 0.0
    mem_used_pct: float = 0.0
    load1: float = 0.0


@dataclass(frozen=True, slots=True)
class PoolRow:
    """One kind of warm VM on a host: how many are ready and wanted."""

    image: str
    cpus: int
    mem_mib: int
    disk_mib: int | None
    ready: int
    wanted: int
    filling: bool


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One host as its node agent reports it: the only host-status schema."""

    host: str
    pid: int
    accel: str  # "kvm", "tcg", or "sim" for a simulated host
    capacity: Capacity
    pressure: Pressure
    images: tuple[str, ...] = ()  # built here
    buildable: tuple[str, ...] = ()  # recipes this host can build
    running: int = 0  # attempts running
    vms: tuple[str, ...] = ()
    pool: tuple[PoolRow, ...] = ()

    @property
    def warm(self) -> dict[str, int]:
        """Ready pooled VMs per image."""
        out: dict[str, int] = {}
        for row in self.pool:
            if row.ready:
                out[row.image] = out.get(row.image, 0) + row.ready
        return out

    @property
    def pool_mem_mib(self) -> int:
        """Memory held by idle pooled VMs."""
        return sum(row.mem_mib * row.ready for row in self.pool)


# ---- interactive sandboxes -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SandboxOpen:
    sid: str
    image: str
    cpus: int = 1
    mem_mib: int = 512
    disk_mib: int | None = None
    timeout_s: float = 600.0
    ids: Ids = field(default_factory=Ids)


@dataclass(frozen=True, slots=True)
class ExecRequest:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    stdin: bytes | None = None
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class ExecReply:
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_s: float


@dataclass(frozen=True, slots=True)
class ExecChunk:
    """One item of a streamed exec: output as it comes (stream 1 stdout, 2 stderr), then the
    reply (and no data) once the command ended."""

    stream: int = 0
    data: bytes = b""
    reply: ExecReply | None = None


# ---- the node protocol -----------------------------------------------------------------------
class NodeProtocol(Protocol):
    """What the scheduler calls on a node-agent actor, which serves one host (a real node
    agent) or several (a group of simulated hosts), through one code path: every per-host call
    names its host, and an actor refuses (WrongHost) a host it does not serve. Payloads are
    this module's bytes."""

    def status_all(self) -> bytes: ...  # {host: HostStatus} for every host served here

    def start_many(self, host: str, requests: bytes) -> bytes: ...  # [StartRequest] -> [bool]

    def collect(self, host: str, acks: bytes, timeout_s: float,
                linger_s: float) -> bytes: ...  # [AttemptKey] -> [Outcome]

    def attempts(self, host: str) -> bytes: ...  # [AttemptInfo]

    def output(self, host: str, key: bytes, out_offset: int,
               err_offset: int) -> bytes | None: ...  # AttemptKey -> Output

    def cancel(self, host: str, iid: str, attempt: int | None) -> int: ...

    def cancel_all(self, host: str) -> int: ...

    def shutdown(self) -> None: ...  # stop every host served here (their VMs go)


# ---- codec -----------------------------------------------------------------------------------
# Written by hand, not with a validation library: it runs for every attempt on the dispatch path
# (thousands a second), so each record type's decoder is built once from its type hints and then
# only checks and copies; where a value is wrong is worked out only when one is.
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


__all__ = [
    "NAMESPACE", "NODE_ACTOR_PREFIX", "AttemptInfo", "AttemptKey", "Capacity", "ExecChunk",
    "ExecReply", "ExecRequest", "Failure", "HostStatus", "Ids", "IterationSpec", "NodeProtocol",
    "Outcome", "Output", "PoolRow", "Pressure", "SandboxOpen", "StartRequest", "State",
    "WireError", "WrongHost", "pack", "unpack", "unpack_list", "unpack_map",
]
