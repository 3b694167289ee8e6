"""The details of command and file records, built the one way: what a command was (argv, cwd,
user, the NAMES of its environment variables), what became of it (exit code or signal,
duration, byte counts and SHA-256 of stdout and stderr), and which file moved (path, size,
SHA-256).

Environment values never reach a record: `env_names` keeps only the names, whatever it is
given (a mapping, names, or KEY=VALUE strings, cut at the first `=`), and `command_details`
takes the environment only through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_ARG_CHARS = 4096  # an argument longer than this is recorded cut, with its length and hash
MAX_ARGS = 1024  # arguments recorded; the rest are counted


@dataclass(frozen=True, slots=True)
class Digest:
    """How many bytes, and their SHA-256 (hex)."""

    size_bytes: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(len(data), hashlib.sha256(data).hexdigest())


EMPTY = Digest.of(b"")


class Digester:
    """A Digest of bytes that come in pieces (a streamed command's output)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._size = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self._size += len(data)

    def digest(self) -> Digest:
        return Digest(self._size, self._sha.hexdigest())


def env_names(env: Mapping[str, object] | Iterable[str]) -> list[str]:
    """The sorted names of an environment; never a value (KEY=VALUE is cut at the `=`)."""
    return sorted({str(name).split("=", 1)[0] for name in env})


def _arg(value: str) -> str:
    if len(value) <= MAX_ARG_CHARS:
        return value
    sha = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{value[:MAX_ARG_CHARS]}...[{len(value)} chars, sha256 {sha}]"


def command_details(argv: Sequence[str], *, cwd: str | None = None, user: str | None = None,
                    env: Mapping[str, object] | Iterable[str] = ()) -> dict[str, Any]:
    """For exec.start and iteration.command: the command as it will run. `env` may be the
    command's environment itself: only its names are kept."""
    args = [_arg(str(a)) for a in argv[:MAX_ARGS]]
    out: dict[str, Any] = {"argv": args, "cwd": cwd or "", "user": user or "",
                           "env_names": env_names(env)}
    if len(argv) > MAX_ARGS:
        out["argv_more"] = len(argv) - MAX_ARGS
    return out


def command_result(*, exit_code: int | None, signal: int | str | None = None,
                   duration_s: float | None = None, stdout: Digest = EMPTY,
                   stderr: Digest = EMPTY, timed_out: bool = False,
                   stdout_truncated: bool = False, stderr_truncated: bool = False,
                   error: str = "") -> dict[str, Any]:
    """For exec.end and iteration.state: what became of a command. The digests are of all it
    printed, not of what was kept (`*_truncated` says when less was kept)."""
    out: dict[str, Any] = {
        "exit_code": exit_code, "signal": signal,
        "duration_s": None if duration_s is None else round(float(duration_s), 6),
        "stdout_bytes": stdout.size_bytes, "stdout_sha256": stdout.sha256,
        "stderr_bytes": stderr.size_bytes, "stderr_sha256": stderr.sha256,
        "timed_out": timed_out}
    if stdout_truncated or stderr_truncated:
        out["stdout_truncated"], out["stderr_truncated"] = stdout_truncated, stderr_truncated
    if error:
        out["error"] = error
    return out


def command_outcome(exit_code: int | None, signal: int | str | None = None,
                    timed_out: bool = False) -> str:
    """The outcome column of a command's end: `exit:N`, `signal:N`, `timeout` or `unknown`."""
    if timed_out:
        return "timeout"
    if signal is not None:
        return f"signal:{signal}"
    return "unknown" if exit_code is None else f"exit:{exit_code}"


def file_details(path: str, data: bytes | Digest, **more: Any) -> dict[str, Any]:
    """For file.write and file.read: the path, the size and SHA-256 of the bytes moved."""
    d = data if isinstance(data, Digest) else Digest.of(data)
    return {**more, "path": path, "size_bytes": d.size_bytes, "sha256": d.sha256}


__all__ = ["EMPTY", "MAX_ARGS", "MAX_ARG_CHARS", "Digest", "Digester", "command_details",
           "command_outcome", "command_result", "env_names", "file_details"]
