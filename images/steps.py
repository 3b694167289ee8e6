"""Running the builder's external commands, with a BuildError that names the step on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import BuildError

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT_S = 1800.0


def tool_env() -> dict[str, str]:
    """The environment of every command: C locale, no prompts, sbin on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    path = env.get("PATH", "")
    env.update(PATH=f"{SBIN_PATH}:{path}" if path else SBIN_PATH, LC_ALL="C",
               DEBIAN_FRONTEND="noninteractive")
    return env


def find_tool(name: str, hint: str) -> str:
    found = shutil.which(name, path=tool_env()["PATH"])
    if found is None:
        raise BuildError("preflight", f"{name} not found: {hint}")
    return found


def run(step: str, argv: Sequence[str], *, cwd: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; raise BuildError(step, ...) with its stderr tail if it fails.

    The command gets a process group of its own, and the whole group is stopped when the build
    is interrupted or times out, so no dpkg is left writing into a tree being removed.
    """
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=tool_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", start_new_session=True)
    except FileNotFoundError as err:
        raise BuildError(step, f"{argv[0]} not found (run scripts/setup.sh)") from err
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        stop_group(proc)
        raise BuildError(step, f"`{argv[0]}` did not finish within {timeout_s:.0f} s") from err
    except BaseException:
        stop_group(proc)
        raise
    if proc.returncode != 0:
        raise BuildError(step, f"`{argv[0]}` exited with {proc.returncode}",
                         stderr or stdout)
    return subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)


def stop_group(proc: subprocess.Popen[str], grace_s: float = 10.0) -> None:
    """SIGTERM the command's process group (debootstrap unmounts on it), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.communicate(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


class Clock:
    """Announces steps through `progress`, each with the seconds elapsed since the build began."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress = progress
        self.started = time.monotonic()
        self.step_started = self.started
        self.current: str | None = None
        self.durations: dict[str, float] = {}

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def step(self, name: str, detail: str) -> None:
        self._close()
        self.current = name
        self.step_started = time.monotonic()
        self.progress(f"[{self.elapsed_s():6.1f}s] {name}: {detail}")

    def done(self, summary: str) -> None:
        self._close()
        self.progress(f"[{self.elapsed_s():6.1f}s] {summary}")

    def _close(self) -> None:
        if self.current is not None:
            self.durations[self.current] = round(time.monotonic() - self.step_started, 2)
            self.current = None
