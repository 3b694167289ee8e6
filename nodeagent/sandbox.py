"""One running VM with its guest channel: exec, files, destroy.

A Sandbox owns a domain and a directory (overlay, console log). `destroy()` is idempotent and
removes both; with keep_logs it first copies the console tail and the domain XML aside, so a
failed run can be looked at after its VM has evaporated.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tryfleet.private import private_dir

from . import exporter
from .errors import NodeAgentError
from .guest import GuestChannel, OutputSink
from .hypervisor import Hypervisor
from .records import ExecResult

CONSOLE_TAIL_BYTES = 256 * 1024


class Sandbox:
    def __init__(self, name: str, vm_dir: Path, hv: Hypervisor, logs_dir: Path,
                 on_destroy: Callable[[Sandbox], None] | None = None) -> None:
        self.name = name
        self.vm_dir = vm_dir
        self.console_log = vm_dir / "console.log"
        self._hv = hv
        self._logs_dir = logs_dir
        self._channel: GuestChannel | None = None
        self._on_destroy = on_destroy
        self._xml: str | None = None
        self.destroyed = False
        self.origin = "boot"  # or "pool" (handed out ready) or "restore" (from a saved guest)
        self.host = ""  # the host it runs on, as its metrics name it
        # When the oldest of the commands running now began (host monotonic; None: none
        # runs): how long a VM has kept at one command weighs its CPU share (cpuweight.py).
        self._running: list[float] = []
        self._running_lock = threading.Lock()

    def attach(self, channel: GuestChannel) -> None:
        self._channel = channel
        self._xml = self._hv.domain_xml(self.name)

    @property
    def channel(self) -> GuestChannel:
        if self._channel is None or self.destroyed:
            raise NodeAgentError(f"sandbox {self.name} is not running")
        return self._channel

    def exec(self, argv: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
             user: str | None = None, stdin: bytes | None = None,
             timeout_s: float | None = None, max_output: int = 16 * 1024 * 1024,
             on_output: OutputSink | None = None,
             should_stop: Callable[[], bool] | None = None) -> ExecResult:
        began = time.monotonic()
        with self._running_lock:
            self._running.append(began)
        try:
            result = self.channel.exec(argv, env=env, cwd=cwd, user=user, stdin=stdin,
                                       timeout_s=timeout_s, max_output=max_output,
                                       on_output=on_output, should_stop=should_stop)
        finally:
            with self._running_lock:
                self._running.remove(began)
        exporter.ran(self.host, time.monotonic() - began)
        return result

    @property
    def command_since(self) -> float | None:
        """When the oldest command running now began (host monotonic); None: none runs."""
        with self._running_lock:
            return min(self._running, default=None)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.channel.write_file(path, data, mode)

    def read_file(self, path: str, max_bytes: int = 64 * 1024 * 1024) -> bytes:
        return self.channel.read_file(path, max_bytes)

    def destroy(self, keep_logs: bool = False,
                details: dict[str, Any] | None = None) -> Path | None:
        """Stop the VM and delete its files; returns where the logs were kept, if asked."""
        if self.destroyed:
            return None
        self.destroyed = True
        if self._channel is not None:
            self._channel.close()
        try:
            self._hv.destroy(self.name)
        finally:
            kept = self._keep_logs(details or {}) if keep_logs else None
            shutil.rmtree(self.vm_dir, ignore_errors=True)
            if self._on_destroy is not None:
                self._on_destroy(self)
        return kept

    def _keep_logs(self, details: dict[str, Any]) -> Path | None:
        # Restored VMs share their slot's name: the directory tells them apart.
        dest = self._logs_dir / f"{self.name}.{self.vm_dir.name}"
        try:
            private_dir(dest)  # the console holds what the guest printed
            (dest / "console.log").write_bytes(_tail(self.console_log, CONSOLE_TAIL_BYTES))
            if self._xml:
                (dest / "domain.xml").write_text(self._xml)
            (dest / "details.json").write_text(json.dumps(
                {"vm": self.name, "kept_at": time.time(), **details}, indent=2, default=str))
        except OSError:
            return None
        return dest

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy(keep_logs=exc[0] is not None)


def _tail(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read()
    except OSError:
        return b""


def prune_logs(logs_dir: Path, keep: int) -> None:
    """Keep only the `keep` newest kept-log directories."""
    if not logs_dir.is_dir():
        return
    entries = sorted((p for p in logs_dir.iterdir() if p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
