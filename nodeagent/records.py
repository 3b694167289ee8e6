"""Small frozen records of the node agent. What crosses to the scheduler is in tryfleet.wire;
IterationSpec and State come from there and are re-exported here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tryfleet.wire import IterationSpec, State


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What one VM gets. disk_mib=None means the image's own size."""

    image: str
    cpus: int = 1
    mem_mib: int = 512
    disk_mib: int | None = None
    boot_timeout_s: float | None = None
    # egress allowlist rules: a NIC whose only way out is the node's proxy; () no NIC at all.
    # Such a VM is always booted (never pooled nor restored: a saved guest has no NIC).
    egress: tuple[str, ...] = ()


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


__all__ = ["ExecResult", "IterationOutcome", "IterationSpec", "SandboxSpec", "State"]
