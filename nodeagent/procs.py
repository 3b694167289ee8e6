"""The processes of one open sandbox, as its node agent follows them: started, they outlive the
call that started it; their output is kept (the last REPLAY_BYTES of each stream, replay.py)
for any number of subscribers, who may join late; they are listed, signalled, fed stdin by
their pid in the guest; they all end when the sandbox closes.

Each Process is the route of its guest request (guest_mux.Route): the channel's reader thread
hands it the guest's frames, checked here field by field, and wakes its subscribers. Memory is
bounded: MAX_RUNNING processes running, KEEP_ENDED ended ones listed, each with its replay.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

from tryfleet.wire import (
    ProcessGone,
    ProcEvent,
    ProcEventKind,
    ProcInfo,
    ProcStart,
    guest_path_problem,
)

from .errors import (
    BadRequest,
    GuestError,
    GuestGone,
    GuestProtocolError,
    GuestRequestError,
    GuestUnresponsive,
)
from .guest import GuestChannel
from .guest_files import refusal
from .guest_mux import fresh
from .replay import Replay

START_TIMEOUT_S = 30.0
MAX_RUNNING = 32
KEEP_ENDED = 16
PIECE_BYTES = 64 * 1024
MAX_INPUT_BYTES = 16 * 1024 * 1024
MAX_ARGV_BYTES = 256 * 1024  # argv and env together, well inside one guest frame
MAX_TAG_CHARS = 256
MAX_PID = 1 << 22  # Linux's largest pid_max
# The guest's own output cap for a process: none to speak of; the host keeps a replay only.
UNCAPPED = 1 << 62
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def check_start(req: ProcStart) -> None:
    """BadRequest for a start request no guest could honour, before it reaches one."""
    if not req.argv or not all(isinstance(a, str) and "\x00" not in a for a in req.argv):
        raise BadRequest("argv must be a non-empty list of strings without NUL")
    for key, value in req.env:
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise BadRequest(f"environment name {key[:100]!r} (or its value) is refused: a "
                             "name is not empty and holds no '=' or NUL, a value no NUL")
    size = sum(len(a.encode("utf-8", "surrogatepass")) for a in req.argv) + sum(
        len(k) + len(v.encode("utf-8", "surrogatepass")) for k, v in req.env)
    if size > MAX_ARGV_BYTES:
        raise BadRequest(f"argv and env hold {size} bytes; at most {MAX_ARGV_BYTES}")
    why = guest_path_problem(req.cwd) if req.cwd is not None else None
    if why is not None:
        raise BadRequest(f"cwd {str(req.cwd)[:200]!r} is refused: {why}")
    if req.user is not None and not USER_RE.match(req.user):
        raise BadRequest(f"user {req.user[:100]!r} is not a user name")
    if req.timeout_s is not None and not (math.isfinite(req.timeout_s) and req.timeout_s >= 0):
        raise BadRequest(f"timeout_s must be a number >= 0 (0: none), got {req.timeout_s}")
    if len(req.tag) > MAX_TAG_CHARS:
        raise BadRequest(f"tag is longer than {MAX_TAG_CHARS} characters")


class Process:
    """One process: its start request, its state, its replay; a guest_mux.Route."""

    def __init__(self, req: ProcStart) -> None:
        self.req = req
        self.rid = 0  # the guest request that started it
        self.pid: int | None = None
        self.cond = threading.Condition()
        self.replay = Replay()
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.stdin_open = req.stdin
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.timed_out = False
        self.error: str | None = None
        self.failure: GuestError | None = None  # why it ended before it started

    @property
    def running(self) -> bool:
        return self.ended_at is None

    # ---- guest_mux.Route (on the channel's reader thread) -----------------------------------
    def deliver(self, msg: dict[str, Any], size: int) -> bool:
        with self.cond:
            try:
                keep = self._take(msg)
            except GuestError as err:
                self._end(error=str(err), failure=err)
                keep = False
            self.cond.notify_all()
            return keep

    def fail(self, err: GuestError) -> None:
        with self.cond:
            if self.running:
                self._end(error=str(err), failure=err)
            self.cond.notify_all()

    def _take(self, msg: dict[str, Any]) -> bool:
        ev = msg.get("ev")
        if not self.running:
            return False
        if ev == "started" and self.pid is None:
            pid = msg.get("pid")
            if type(pid) is not int or not 0 <= pid <= MAX_PID:
                raise GuestProtocolError(f"bad started event: {_brief(msg)}")
            self.pid = pid
            return True
        if ev == "out" and self.pid is not None:
            stream, data = msg.get("stream"), msg.get("data")
            if stream not in (1, 2) or type(data) is not bytes:
                raise GuestProtocolError(f"bad output event: {_brief(msg)}")
            self.replay.add(stream, data)
            return True
        if ev == "exit" and self.pid is not None:
            code, sig, timed_out = msg.get("code"), msg.get("signal"), msg.get("timed_out")
            if not (code is None or (type(code) is int and -(1 << 31) <= code < 1 << 31)) or \
                    not (sig is None or (type(sig) is int and 0 < sig < 128)):
                raise GuestProtocolError(f"bad exit event: {_brief(msg)}")
            self._end(code=code, sig=sig, timed_out=timed_out is True)
            return False
        if ev == "error" and self.pid is None:
            err = refusal("exec", msg)
            self._end(error=str(err), failure=err)
            return False
        raise GuestProtocolError(f"unexpected answer for a process: {_brief(msg)}")

    def _end(self, code: int | None = None, sig: int | None = None, timed_out: bool = False,
             error: str | None = None, failure: GuestError | None = None) -> None:
        self.ended_at = time.time()
        self.exit_code, self.signal, self.timed_out = code, sig, timed_out
        self.error = error[:1000] if error else None
        self.failure = failure if self.pid is None else None
        self.stdin_open = False

    # ---- callers ---------------------------------------------------------------------------
    def wait_started(self, deadline: float) -> int:
        """Its pid once the guest started it; the guest's refusal, or BadRequest for a
        command that could not be run (the guest says why on its stderr)."""
        with self.cond:
            while self.pid is None and self.running:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestUnresponsive(f"guest did not start {self.req.argv[0]!r} in time")
                self.cond.wait(left)
            if self.pid is None:
                raise fresh(self.failure or GuestGone(self.error or "guest gone"))
            while self.pid == 0 and self.running and time.monotonic() < deadline:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            if self.pid == 0:
                cursor, said = [0, 0], b""
                while (piece := self.replay.read(cursor, PIECE_BYTES)) is not None:
                    said += piece.data if piece.stream == 2 else b""
                raise BadRequest(said.decode(errors="replace").strip()[:1000] or
                                 f"cannot run {self.req.argv[0]!r}")
            return self.pid

    def info(self) -> ProcInfo:
        with self.cond:
            return ProcInfo(
                pid=self.pid or 0, tag=self.req.tag, argv=self.req.argv, cwd=self.req.cwd,
                user=self.req.user, env_names=tuple(k for k, _ in self.req.env),
                started_at=self.started_at, running=self.running, stdin_open=self.stdin_open,
                exit_code=self.exit_code, signal=self.signal, timed_out=self.timed_out,
                error=self.error, ended_at=self.ended_at)

    def cursor(self, replay: bool) -> list[int]:
        """Where a subscriber starts reading: its start (replay), or what comes from now."""
        with self.cond:
            return [0, 0] if replay else self.replay.end()

    def follow(self, cursor: list[int], keepalive_s: float,
               stopped: threading.Event) -> Iterator[ProcEvent]:
        """START, then its output from cursor, KEEPALIVE after keepalive_s (> 0) of
        silence, then END; nothing more once stopped is set."""
        pid = self.pid or 0
        yield ProcEvent(ProcEventKind.START, pid, info=self.info())
        quiet_since = time.monotonic()
        while True:
            with self.cond:
                while True:
                    piece = self.replay.read(cursor, PIECE_BYTES)
                    if piece is not None or not self.running or stopped.is_set():
                        break
                    wait_s = None if keepalive_s <= 0 else \
                        keepalive_s - (time.monotonic() - quiet_since)
                    if wait_s is not None and wait_s <= 0:
                        break
                    self.cond.wait(wait_s)
                ended = not self.running
            if stopped.is_set():
                return
            if piece is not None:
                yield ProcEvent(ProcEventKind.OUTPUT, pid, piece.stream, piece.data,
                                piece.dropped)
            elif ended:
                yield ProcEvent(ProcEventKind.END, pid, info=self.info())
                return
            else:
                yield ProcEvent(ProcEventKind.KEEPALIVE, pid)
            quiet_since = time.monotonic()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()


class ProcessTable:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self._lock = threading.Lock()
        self._procs: dict[int, Process] = {}  # by pid in the guest
        self._starting = 0
        self._follows: dict[str, tuple[Process, threading.Event]] = {}
        self._closed = False

    def start(self, ch: GuestChannel, req: ProcStart) -> ProcInfo:
        """Start it and return as soon as it runs (its pid known)."""
        check_start(req)
        with self._lock:
            if self._closed:
                raise GuestGone(f"sandbox {self.sid} was closed")
            running = sum(1 for p in self._procs.values() if p.running) + self._starting
            if running >= MAX_RUNNING:
                raise BadRequest(f"sandbox {self.sid} already runs {running} processes (at "
                                 f"most {MAX_RUNNING}): wait for one to end, or kill one")
            self._starting += 1
        try:
            proc = Process(req)
            proc.rid = ch.spawn(proc, list(req.argv), env=dict(req.env), cwd=req.cwd,
                                user=req.user, stdin_open=req.stdin,
                                timeout_s=req.timeout_s or None, max_output=UNCAPPED)
            try:
                pid = proc.wait_started(time.monotonic() + START_TIMEOUT_S)
            except GuestUnresponsive:
                ch.abandon(proc.rid)
                raise
            with self._lock:
                old = self._procs.get(pid)
                if old is not None and old.running:
                    raise GuestProtocolError(f"guest reported pid {pid} for a second running "
                                             "process")
                self._procs[pid] = proc
                self._evict()
        finally:
            with self._lock:
                self._starting -= 1
        return proc.info()

    def _evict(self) -> None:
        ended = sorted((p.ended_at or 0.0, pid) for pid, p in self._procs.items()
                       if not p.running)
        for _, pid in ended[:max(0, len(ended) - KEEP_ENDED)]:
            del self._procs[pid]

    def infos(self) -> list[ProcInfo]:
        with self._lock:
            self._evict()
            procs = list(self._procs.values())
        return sorted((p.info() for p in procs), key=lambda i: (i.started_at, i.pid))

    def get(self, pid: int) -> Process:
        proc = self._procs.get(pid)
        if proc is None:
            raise ProcessGone(f"no process {pid} in sandbox {self.sid}")
        return proc

    def _running(self, pid: int) -> Process:
        proc = self.get(pid)
        if not proc.running:
            raise ProcessGone(f"process {pid} in sandbox {self.sid} has ended")
        return proc

    def signal(self, ch: GuestChannel, pid: int, signum: int) -> None:
        """signum sent to the process (its process group, as the guest started it)."""
        if isinstance(signum, bool) or not isinstance(signum, int) or not 0 < signum < 65:
            raise BadRequest(f"signal must be a number from 1 to 64, got {signum!r}")
        proc = self._running(pid)
        try:
            ch.signal(proc.rid, int(signum))
        except GuestRequestError as err:  # it ended on the way
            raise ProcessGone(f"process {pid} in sandbox {self.sid} has ended ({err})") from None

    def input(self, ch: GuestChannel, pid: int, data: bytes, eof: bool = False) -> None:
        """Data written to its stdin, then (eof) its stdin closed."""
        if len(data) > MAX_INPUT_BYTES:
            raise BadRequest(f"{len(data)} bytes of input in one call; at most "
                             f"{MAX_INPUT_BYTES}")
        proc = self._running(pid)
        if not proc.stdin_open:
            raise BadRequest(f"process {pid} has no open stdin (start it with stdin kept "
                             "open, and write before closing it)")
        if eof:
            proc.stdin_open = False
        try:
            ch.send_stdin(proc.rid, data, eof)
        except GuestRequestError as err:
            raise ProcessGone(f"process {pid} in sandbox {self.sid} has ended ({err})") from None

    def follow(self, pid: int, replay: bool = True, keepalive_s: float = 0.0,
               follow_id: str = "") -> Iterator[ProcEvent]:
        """Its events (see Process.follow); unfollow(follow_id) ends them early."""
        proc = self.get(pid)  # refused here, before the stream starts
        stopped = threading.Event()
        if follow_id:
            with self._lock:
                self._follows[follow_id] = (proc, stopped)
        return self._follow(proc, proc.cursor(replay), keepalive_s, stopped, follow_id)

    def _follow(self, proc: Process, cursor: list[int], keepalive_s: float,
                stopped: threading.Event, follow_id: str) -> Iterator[ProcEvent]:
        try:
            yield from proc.follow(cursor, keepalive_s, stopped)
        finally:
            if follow_id:
                with self._lock:
                    if self._follows.get(follow_id, (None, None))[1] is stopped:
                        del self._follows[follow_id]

    def unfollow(self, follow_id: str) -> bool:
        """End a subscription whose reader went away (the process runs on); False if none."""
        with self._lock:
            found = self._follows.pop(follow_id, None)
        if found is None:
            return False
        found[1].set()
        found[0].wake()
        return True

    def close(self) -> None:
        """The sandbox closed: every process ended (its VM is gone), every follower told."""
        with self._lock:
            self._closed = True
            procs = list(self._procs.values())
        for proc in procs:
            proc.fail(GuestGone(f"sandbox {self.sid} was closed"))


def _brief(msg: dict[str, Any]) -> str:
    return repr({k: (v[:40] if isinstance(v, (bytes, str)) else v) for k, v in msg.items()})[:300]


__all__ = ["KEEP_ENDED", "MAX_RUNNING", "Process", "ProcessTable", "check_start"]
