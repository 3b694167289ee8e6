"""Processes in a sandbox as E2B's process service sees them: started, their output and end
streamed, listed, signalled, fed stdin. `Processes` is what the RPCs (process.py) need;
`NodeProcesses` keeps them in the node agent's per-sandbox process table (sandbox_proc_*):
several at once in one sandbox, each as the user its call names, with pids of the guest. A
process outlives the stream that started it, as in E2B: a client that hangs up (or a
background command's handle that disconnects) leaves it running, to be listed, followed again
(Connect), signalled or fed stdin; its own deadline (the caller's timeout) kills it.
"""

from __future__ import annotations

import builtins
import secrets
import signal as signal_mod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tryfleet.wire import (
    ProcEvent,
    ProcEventKind,
    ProcInfo,
    ProcStart,
    SandboxGone,
    pack,
    unpack,
    unpack_list,
)

from ..routes.sandboxes import detach
from .connect import Code, ConnectError
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


_SIGNAL_WORDS: dict[int, str] = {
    signal_mod.SIGKILL: "killed", signal_mod.SIGTERM: "terminated",
    signal_mod.SIGINT: "interrupt", signal_mod.SIGHUP: "hangup", signal_mod.SIGABRT: "aborted",
    signal_mod.SIGSEGV: "segmentation fault", signal_mod.SIGPIPE: "broken pipe",
    signal_mod.SIGQUIT: "quit"}


def ended(info: ProcInfo) -> Ended:
    """How a process ended, as E2B's daemon reports it (after Go's os.ProcessState)."""
    if info.exit_code is not None and info.signal is None:
        return Ended(info.exit_code, True, f"exit status {info.exit_code}",
                     timed_out=info.timed_out)
    signum = info.signal or signal_mod.SIGKILL  # no status at all: killed with its sandbox
    return Ended(-1, False, f"signal: {_SIGNAL_WORDS.get(signum, f'signal {signum}')}",
                 error=info.error, timed_out=info.timed_out)


def spec_of_info(info: ProcInfo, home: str) -> ProcessSpec:
    """What a listing says of a process (the node keeps its variables' names, not values)."""
    return ProcessSpec(info.argv[0], info.argv[1:], {}, info.cwd or home, info.tag or None)


class NodeProcesses:
    """Processes in the node agent's process table of each sandbox (see the module's
    docstring)."""

    async def start(self, t: Target, spec: ProcessSpec, timeout_s: float | None
                    ) -> AsyncIterator[Event]:
        req = ProcStart((spec.cmd, *spec.args), tuple(sorted(spec.envs.items())), spec.cwd,
                        None if t.user == "root" else t.user, spec.stdin, timeout_s,
                        spec.tag or "")
        async for ev in _follow(t, lambda follow_id: (
                "sandbox_proc_run", pack(req), follow_id, 0.0)):
            yield ev

    async def connect(self, t: Target, which: Selector) -> AsyncIterator[Event]:
        pid = await self._pid(t, which)
        async for ev in _follow(t, lambda follow_id: (  # from now on, as E2B's does
                "sandbox_proc_follow", pid, False, 0.0, follow_id)):
            yield ev

    async def list(self, t: Target) -> list[ProcessInfo]:
        return [ProcessInfo(i.pid, spec_of_info(i, t.home)) for i in await self._infos(t)]

    async def signal(self, t: Target, which: Selector, signum: int) -> None:
        await t.node("sandbox_proc_signal", await self._pid(t, which), signum)

    async def send_input(self, t: Target, which: Selector, data: bytes) -> None:
        await t.node("sandbox_proc_input", await self._pid(t, which), data, False)

    async def close_stdin(self, t: Target, which: Selector) -> None:
        await t.node("sandbox_proc_close_stdin", await self._pid(t, which))

    async def _infos(self, t: Target) -> builtins.list[ProcInfo]:
        """The running processes (the node also lists some that ended; E2B lists none)."""
        return [i for i in unpack_list(ProcInfo, await t.node("sandbox_proc_list"))
                if i.running]

    async def _pid(self, t: Target, which: Selector) -> int:
        if which.pid is not None:
            return which.pid
        for info in await self._infos(t):
            if info.tag == which.tag:
                return info.pid
        raise ConnectError(Code.NOT_FOUND, f"process with tag {which.tag!r} not found")


async def _follow(t: Target, call: Callable[[str], tuple[Any, ...]]) -> AsyncIterator[Event]:
    """A process's events from the node: `call(follow_id)` is the streaming call to make
    (sandbox_proc_run or _follow, and their arguments); when the reader goes away first, the
    node stops following it (the process runs on). Keep-alives are the RPC's (process.py)."""
    box, fleet = t.box, t.request.app.state.fleet
    follow_id, done = secrets.token_hex(8), False
    method, *args = call(follow_id)
    try:
        async for raw in fleet.node_stream(box.host, method, box.id, *args):
            ev = unpack(ProcEvent, raw)
            if ev.kind is ProcEventKind.START:
                yield Started(ev.pid)
            elif ev.kind is ProcEventKind.OUTPUT and ev.data:
                yield Output(ev.stream, ev.data)
            elif ev.kind is ProcEventKind.END and ev.info is not None:
                done = True
                yield ended(ev.info)
                return
        done = True
    except SandboxGone as err:
        done = True
        raise await t.gone(err) from None
    finally:
        if not done:
            detach(fleet.node(box.host, "sandbox_proc_unfollow", box.id, follow_id))


__all__ = ["Ended", "Event", "NodeProcesses", "Output", "ProcessInfo", "ProcessSpec",
           "Processes", "Selector", "Started", "ended"]
