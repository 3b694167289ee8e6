"""Everything that crosses between the scheduler and the node agents: small frozen records and
their msgpack codec. The scheduler knows the node side only through this module; the node side
never imports the scheduler.

Every record is a frozen dataclass of plain fields (str, int, float, bool, bytes, None, enums,
tuples, str-keyed dicts and other records). `pack(record)` gives msgpack bytes (a map of field
names, so a field added later is ignored by an older reader); `unpack(Type, data)` checks every
field's type on the way in and raises WireError naming the field. Nothing is pickled. (The codec
lives in _wirecodec.py; use it from here.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from ._wirecodec import WireError, pack, unpack, unpack_list, unpack_map
from .errors import NotFound

# Where the scheduler finds node agents: every actor that implements NodeProtocol (a real
# host's node agent, or a group of simulated hosts) is a named Ray actor under this prefix in
# this namespace. The names live here, beside the protocol, so that the scheduler needs nothing
# of the node side to find its hosts.
NAMESPACE = "tryfleet"
NODE_ACTOR_PREFIX = "tryfleet-node-"


class WrongHost(NotFound):
    """A call named a host that the node-agent actor it reached does not serve."""


class SandboxGone(NotFound):
    """The sandbox a call named is not open on that host: closed, timed out, its VM died, or
    its node agent restarted. Its record should be closed."""


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
    key: str = ""  # the id of the API key that asked for it (never its secret)


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
    # egress allowlist rules ("HOST:PORT", canonical) from the tenant's policy, never from the
    # request: () means no network device at all
    egress: tuple[str, ...] = ()


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
    # of the output as the host got it (what stdout/stderr hold, before any cut on the
    # way), computed on the host: the head records them in its audit trail
    stdout_bytes: int = 0
    stdout_sha256: str = ""
    stderr_bytes: int = 0
    stderr_sha256: str = ""

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


@dataclass(frozen=True, slots=True)
class Exposition:
    """A node agent's Prometheus metrics: its process's default registry in the text format,
    and the process id (so that a gateway in the same process counts them once)."""

    pid: int
    text: bytes


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
    egress: tuple[str, ...] = ()  # as IterationSpec.egress: the tenant policy's rules


@dataclass(frozen=True, slots=True)
class ExecRequest:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None  # None: the user's home (root's, /root, when no user is named)
    stdin: bytes | None = None
    timeout_s: float | None = None
    user: str | None = None  # a user of the sandbox's /etc/passwd; None: root


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


class FileType(enum.StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One path in a sandbox, as its guest reported it (every field checked by the host);
    a symlink is not followed."""

    name: str
    path: str
    type: FileType
    size: int
    mode: int  # permission bits, 0 to 0o7777
    mtime: float  # seconds since the epoch, by the guest's clock
    owner: str = ""
    group: str = ""
    target: str | None = None  # where a symlink points


@dataclass(frozen=True, slots=True)
class Listing:
    path: str
    entries: tuple[FileInfo, ...]
    truncated: bool  # there were more than the listing may hold


@dataclass(frozen=True, slots=True)
class ExecChunk:
    """One item of a streamed exec: output as it comes (stream 1 stdout, 2 stderr), then the
    reply (and no data) once the command ended."""

    stream: int = 0
    data: bytes = b""
    reply: ExecReply | None = None


# ---- processes in a sandbox -----------------------------------------------------------------
class ProcessGone(NotFound):
    """The process a call named (by its pid in the guest) is not in that sandbox's process
    table, or has ended when the call needs it running (a signal, stdin)."""


@dataclass(frozen=True, slots=True)
class ProcStart:
    """A command started in an open sandbox that outlives the call that started it."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None  # None: the user's home (root's, /root, when no user is named)
    user: str | None = None  # a user of the sandbox's /etc/passwd; None: root
    stdin: bool = False  # keep its stdin open for sandbox_proc_input (else it reads nothing)
    timeout_s: float | None = None  # None or 0: none (the sandbox's lifetime still bounds it)
    tag: str = ""  # the caller's own name for it, shown in listings


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """A process of a sandbox's table, running or ended (then with how it ended)."""

    pid: int  # in the guest
    tag: str
    argv: tuple[str, ...]
    cwd: str | None
    user: str | None
    env_names: tuple[str, ...]  # the names of the variables the start request set
    started_at: float  # wall clock, seconds since the epoch
    running: bool = True
    stdin_open: bool = False
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None  # why it ended without an exit status (its sandbox closed, ...)
    ended_at: float | None = None


class ProcEventKind(enum.StrEnum):
    START = "start"
    OUTPUT = "output"
    KEEPALIVE = "keepalive"
    END = "end"


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One item of a followed process, in order: START once (info: the process), OUTPUT as
    it comes (stream 1 stdout, 2 stderr; dropped: bytes of that stream printed before this
    data that are no longer kept, so a subscriber that joined late or fell behind knows),
    KEEPALIVE when silent for the keepalive asked for, then END once (info: how it ended)."""

    kind: ProcEventKind
    pid: int
    stream: int = 0
    data: bytes = b""
    dropped: int = 0
    info: ProcInfo | None = None


# ---- guest egress --------------------------------------------------------------------------
MAX_EGRESS_REQUEST_CHARS = 512


@dataclass(frozen=True, slots=True)
class EgressEvent:
    """One egress proxy event of a VM: a decision on a connection it asked for (kind
    "decision", before anything is connected or answered), or the end of an allowed one (kind
    "end", with its byte counts and duration). reason says why: "allowlisted",
    "not-allowlisted", "blocked-address:<kind>", "resolve-failed", "bad-request",
    "too-many-connections". request is the method and target as the guest sent them
    ("CONNECT pypi.org:443", "GET http://allowed.test/x"), cut at MAX_EGRESS_REQUEST_CHARS."""

    vm: str
    ids: Ids
    kind: str  # "decision" or "end"
    host: str  # the destination's name as asked for
    port: int
    address: str  # the address connected to (or refused); "" when none
    decision: str  # "allow" or "deny"
    reason: str
    bytes_up: int = 0  # guest -> destination
    bytes_down: int = 0  # destination -> guest
    duration_s: float = 0.0
    request: str = ""


MAX_GUEST_PATH_BYTES = 4096


def guest_path_problem(path: object) -> str | None:
    """Why a path in a sandbox is refused before it reaches the guest (None: it is fine): it
    must be absolute and normalised, with no '.', '..' or empty parts, no NUL, and at most
    MAX_GUEST_PATH_BYTES bytes. The gateway and the node agent apply the same rule."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "it must be absolute (start with '/')"
    if "\x00" in path or len(path.encode("utf-8", "surrogatepass")) > MAX_GUEST_PATH_BYTES:
        return f"it must hold no NUL and be at most {MAX_GUEST_PATH_BYTES} bytes"
    parts = path.split("/")[1:]
    if path != "/" and any(p in ("", ".", "..") for p in parts):
        return "it must be normalised: no '..', '.' or empty parts (no '//', no trailing '/')"
    return None


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

    def metrics(self) -> bytes: ...  # Exposition: this process's Prometheus metrics


__all__ = [
    "MAX_EGRESS_REQUEST_CHARS", "MAX_GUEST_PATH_BYTES", "NAMESPACE", "NODE_ACTOR_PREFIX",
    "AttemptInfo", "AttemptKey", "Capacity", "EgressEvent", "ExecChunk", "ExecReply",
    "ExecRequest", "Exposition", "Failure", "FileInfo", "FileType", "HostStatus", "Ids",
    "IterationSpec", "Listing", "NodeProtocol", "Outcome", "Output", "PoolRow", "Pressure",
    "ProcEvent", "ProcEventKind", "ProcInfo", "ProcStart", "ProcessGone", "SandboxGone",
    "SandboxOpen", "StartRequest", "State", "WireError", "WrongHost", "guest_path_problem",
    "pack", "unpack", "unpack_list", "unpack_map",
]
