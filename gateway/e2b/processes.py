"""Processes in a sandbox as E2B's process service sees them: started, their output and end
streamed, listed, signalled, fed stdin. `Processes` is what the RPCs (process.py) need; the
implementation below runs each command as a streamed exec on the sandbox's node agent.

Streamed exec (`sandbox_exec_stream`) runs one command at a time per sandbox, for as long as
its stream is read: so here a command lives as long as its Start stream (a client that hangs
up has its command killed, as /v1's streamed exec does), pids are this gateway's own numbers,
List knows the commands this gateway started, SendSignal kills, and neither stdin nor
reattaching (Connect) is possible.
"""

from __future__ import annotations

import itertools
import secrets
import signal as signal_mod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from tryfleet.wire import ExecChunk, ExecReply, ExecRequest, SandboxGone, pack, unpack

from ..routes.sandboxes import detach
from .connect import Code, ConnectError, unimplemented
from .envd import Target


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    cmd: str
    args: tuple[str, ...]
    envs: dict[str, str]
    cwd: str
    tag: str | None = None
    stdin: bool = False


@dataclass(frozen=True, slots=True)
class Selector:
    """A process named by its pid, or by the tag it was started with."""

    pid: int | None = None
    tag: str | None = None

    def matches(self, pid: int, tag: str | None) -> bool:
        return pid == self.pid if self.pid is not None else tag == self.tag


@dataclass(frozen=True, slots=True)
class Started:
    pid: int


@dataclass(frozen=True, slots=True)
class Output:
    stream: int  # 1 stdout, 2 stderr
    data: bytes


@dataclass(frozen=True, slots=True)
class Ended:
    exit_code: int  # -1 when a signal ended it (Go's ProcessState.ExitCode)
    exited: bool
    status: str  # Go's ProcessState.String(): "exit status 1", "signal: killed"
    error: str | None = None
    timed_out: bool = False


Event = Started | Output | Ended


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    spec: ProcessSpec


class Processes(Protocol):
    def start(self, t: Target, spec: ProcessSpec, timeout_s: float | None
              ) -> AsyncIterator[Event]: ...

    def connect(self, t: Target, which: Selector) -> AsyncIterator[Event]: ...

    async def list(self, t: Target) -> list[ProcessInfo]: ...

    async def signal(self, t: Target, which: Selector, signum: int) -> None: ...

    async def send_input(self, t: Target, which: Selector, data: bytes) -> None: ...

    async def close_stdin(self, t: Target, which: Selector) -> None: ...


_SIGNAL_WORDS: dict[int, str] = {signal_mod.SIGKILL: "killed", signal_mod.SIGTERM: "terminated",
                 signal_mod.SIGINT: "interrupt", signal_mod.SIGHUP: "hangup",
                 signal_mod.SIGABRT: "aborted", signal_mod.SIGSEGV: "segmentation fault",
                 signal_mod.SIGPIPE: "broken pipe", signal_mod.SIGQUIT: "quit"}


def ended(reply: ExecReply) -> Ended:
    """How a command ended, as E2B's daemon reports it (after Go's os.ProcessState)."""
    if reply.exit_code is not None and reply.signal is None:
        return Ended(reply.exit_code, True, f"exit status {reply.exit_code}",
                     timed_out=reply.timed_out)
    signum = reply.signal or signal_mod.SIGKILL  # no code, no signal: killed at a deadline
    word = _SIGNAL_WORDS.get(signum, f"signal {signum}")
    return Ended(-1, False, f"signal: {word}", timed_out=reply.timed_out)


@dataclass(eq=False)
class _Running:
    pid: int
    spec: ProcessSpec
    exec_id: str


@dataclass
class StreamedExec:
    """Processes as streamed execs on the node agent (see the module's docstring)."""

    table: dict[str, dict[int, _Running]] = field(default_factory=dict)
    _pids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    async def start(self, t: Target, spec: ProcessSpec, timeout_s: float | None
                    ) -> AsyncIterator[Event]:
        if spec.stdin:
            raise _needs_table("a command with an open stdin")
        running = _Running(next(self._pids), spec, secrets.token_hex(8))
        req = ExecRequest((spec.cmd, *spec.args), tuple(sorted(spec.envs.items())), spec.cwd,
                          None, timeout_s)
        box, fleet = t.box, t.request.app.state.fleet
        self.table.setdefault(box.id, {})[running.pid] = running
        done = False
        try:
            yield Started(running.pid)
            async for raw in fleet.node_stream(box.host, "sandbox_exec_stream", box.id,
                                               pack(req), running.exec_id):
                chunk = unpack(ExecChunk, raw)
                if chunk.reply is not None:
                    done = True
                    yield ended(chunk.reply)
                    return
                if chunk.stream in (1, 2) and chunk.data:
                    yield Output(chunk.stream, chunk.data)
        except SandboxGone as err:
            done = True
            raise await t.gone(err) from None
        finally:
            self.table.get(box.id, {}).pop(running.pid, None)
            if not done:  # its reader went away: the command goes too
                detach(fleet.node(box.host, "sandbox_exec_cancel", box.id, running.exec_id))

    async def connect(self, t: Target, which: Selector) -> AsyncIterator[Event]:
        self._find(t, which)
        raise _needs_table("reattaching to a running command")
        yield Started(0)  # pragma: no cover (makes this an async generator)

    async def list(self, t: Target) -> list[ProcessInfo]:
        return [ProcessInfo(r.pid, r.spec) for r in self.table.get(t.box.id, {}).values()]

    async def signal(self, t: Target, which: Selector, signum: int) -> None:
        running = self._find(t, which)
        await t.node("sandbox_exec_cancel", running.exec_id)  # SIGKILL, whatever was asked

    async def send_input(self, t: Target, which: Selector, data: bytes) -> None:
        self._find(t, which)
        raise _needs_table("sending stdin")

    async def close_stdin(self, t: Target, which: Selector) -> None:
        self._find(t, which)
        raise _needs_table("closing stdin")

    def _find(self, t: Target, which: Selector) -> _Running:
        for r in self.table.get(t.box.id, {}).values():
            if which.matches(r.pid, r.spec.tag):
                return r
        what = f"pid {which.pid}" if which.pid is not None else f"tag {which.tag!r}"
        raise ConnectError(Code.NOT_FOUND, f"process with {what} not found")

    def forget(self, sid: str) -> None:
        self.table.pop(sid, None)


def _needs_table(what: str) -> ConnectError:
    return unimplemented(what, "this fleet's node agents run one streamed command at a time "
                         "per sandbox")


__all__ = ["Ended", "Event", "Output", "ProcessInfo", "ProcessSpec", "Processes", "Selector",
           "Started", "StreamedExec", "ended"]
