"""What an iteration's ending means, in words, when its state and exit code alone do not say
it: a command the host killed at its deadline, or one the guest's kernel killed because the
guest ran out of memory (it logs so on the serial console, which the host reads)."""

from __future__ import annotations

import re
from pathlib import Path

from .records import ExecResult, State

# The guest kernel's out-of-memory report, printed at KERN_ERR (shown even with `quiet`).
_OOM = re.compile(rb"Out of memory: Killed process (\d+) \(([^)\n]{1,64})\)")
_CONSOLE_TAIL_BYTES = 64 * 1024
_KILLED = 128 + 9  # how a shell reports a child killed by SIGKILL


def explain(state: State, result: ExecResult, timeout_s: float, mem_mib: int,
            console_log: Path) -> str | None:
    """A sentence that says what ended the command, or None when its state says it all."""
    if state is State.TIMED_OUT:
        return (f"the command ran past its deadline of {timeout_s:g} s and was killed with "
                "its VM; give it a longer timeout_s if it needs more time")
    if state is State.FAILED and (result.signal == 9 or result.exit_code == _KILLED):
        found = _OOM.findall(_tail(console_log))
        if found:
            pid, name = found[-1]
            return (f"the guest ran out of memory: its kernel killed "
                    f"{name.decode(errors='replace')} (pid {int(pid)}) in a {mem_mib} MiB guest; "
                    "give it a larger mem_mib")
    return None


def _tail(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - _CONSOLE_TAIL_BYTES))
            return fh.read()
    except OSError:
        return b""


__all__ = ["explain"]
