"""Small frozen records that cross module and process boundaries."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path


class State(str, enum.Enum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    INFRA_ERROR = "INFRA_ERROR"


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What one VM gets. disk_mib=None means the image's own size."""

    image: str
    cpus: int = 1
    mem_mib: int = 512
    disk_mib: int | None = None
    boot_timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    duration_s: float


@dataclass(frozen=True, slots=True)
class IterationSpec:
    """One iteration: a fresh VM, files in, one command, files out, VM gone."""

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
class IterationOutcome:
    state: State
    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    started_at: float  # wall clock, seconds since the epoch
    ended_at: float
    duration_s: float  # host monotonic
    host: str
    error: str | None = None
    files: tuple[tuple[str, bytes], ...] = ()
    kept_logs: Path | None = None
    vm: str | None = None
    phases_s: tuple[tuple[str, float], ...] = field(default=())
