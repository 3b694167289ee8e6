"""The interactive sandboxes a node agent holds open: each a VM under a sandbox id, with its own
expiry (a safety net: the scheduler closes it at its timeout, and this closes it a little later
if nobody did), its commands (several at once: the guest channel is multiplexed), its table of
processes that outlive the calls that started them (procs.py), and the file operations of its
guest with paths checked before they reach it.

A sandbox whose VM died (the guest channel closed) is dropped at once and reported gone
(wire.SandboxGone), so its record can be closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from tryfleet.wire import (
    ExecChunk,
    ExecReply,
    ExecRequest,
    FileInfo,
    Listing,
    ProcEvent,
    ProcInfo,
    ProcStart,
    SandboxGone,
    guest_path_problem,
)

from .errors import BadRequest, GuestGone, NodeAgentError
from .guest import GuestChannel
from .procs import ProcessTable
from .records import ExecResult
from .sandbox import Sandbox

log = logging.getLogger("tryfleet.nodeagent")
EXPIRY_GRACE_S = 5.0  # the node's own expiry comes this long after the scheduler's
MAX_READ_BYTES = 64 * 1024 * 1024
MAX_RANGE_BYTES = 16 * 1024 * 1024


def check_path(path: str) -> str:
    """An absolute, normalised guest path without `..` (BadRequest otherwise)."""
    why = guest_path_problem(path)
    if why is not None:
        raise BadRequest(f"path {str(path)[:200]!r} is refused: {why}")
    return path


def reply_of(r: ExecResult) -> ExecReply:
    return ExecReply(**asdict(r))


@dataclass(eq=False)
class _Box:
    sid: str
    sandbox: Sandbox
    deadline: float  # host monotonic
    procs: ProcessTable
    timer: threading.Timer | None = None


class OpenSandboxes:
    def __init__(self, host: str) -> None:
        self.host = host
        self._boxes: dict[str, _Box] = {}
        self._lock = threading.Lock()
        self._streams: dict[tuple[str, str], threading.Event] = {}  # (sid, exec_id) -> stop

    # ---- lifecycle -------------------------------------------------------------------------
    def add(self, sid: str, sandbox: Sandbox, timeout_s: float) -> None:
        box = _Box(sid, sandbox, time.monotonic() + timeout_s, ProcessTable(sid))
        with self._lock:
            self._boxes[sid] = box
        self._arm(box, timeout_s)

    def vm_of(self, sid: str) -> str | None:
        box = self._boxes.get(sid)
        return None if box is None else box.sandbox.name

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._boxes)

    def _arm(self, box: _Box, timeout_s: float) -> None:
        if box.timer is not None:
            box.timer.cancel()
        box.timer = threading.Timer(timeout_s + EXPIRY_GRACE_S, self._expired, args=(box,))
        box.timer.daemon = True
        box.timer.start()

    def _expired(self, box: _Box) -> None:
        if self._boxes.get(box.sid) is box and time.monotonic() >= box.deadline:
            log.info("sandbox %s on %s: its timeout passed; closing it", box.sid, self.host,
                     extra={"sandbox": box.sid})
            self.close(box.sid)

    def extend(self, sid: str, timeout_s: float) -> None:
        """Its deadline moves to now + timeout_s (shorter or longer)."""
        box = self._get(sid)
        box.deadline = time.monotonic() + timeout_s
        self._arm(box, timeout_s)

    def close(self, sid: str) -> bool:
        """Its VM destroyed at once (a command running in it ends); False if not open."""
        with self._lock:
            box = self._boxes.pop(sid, None)
        if box is None:
            return False
        if box.timer is not None:
            box.timer.cancel()
        box.procs.close()  # its processes end, their followers told why
        box.sandbox.destroy()
        return True

    def close_all(self) -> None:
        for sid in self.ids():
            self.close(sid)

    def _get(self, sid: str) -> _Box:
        box = self._boxes.get(sid)
        if box is None:
            raise SandboxGone(f"sandbox {sid} is not open on {self.host} (closed, timed out, "
                              "or its node agent restarted)")
        return box

    @contextmanager
    def _use(self, sid: str) -> Iterator[_Box]:
        """The box, for one call to its guest (others may run at once); a guest that died
        is dropped and reported gone."""
        box = self._get(sid)
        try:
            yield box
        except NodeAgentError as err:  # GuestGone, or the VM destroyed under the call
            if not isinstance(err, GuestGone) and not box.sandbox.destroyed:
                raise
            closed = self._boxes.get(sid) is not box
            self.close(sid)
            why = "it was closed" if closed else f"its VM stopped ({err})"
            raise SandboxGone(f"sandbox {sid} is gone from {self.host}: {why}") from None

    def _limit(self, box: _Box, asked: float | None) -> float:
        left = max(0.1, box.deadline - time.monotonic())
        return min(asked or left, left)

    # ---- exec ------------------------------------------------------------------------------
    def exec(self, sid: str, req: ExecRequest) -> ExecReply:
        with self._use(sid) as box:
            return reply_of(box.sandbox.exec(
                list(req.argv), env=dict(req.env) or None, cwd=req.cwd, user=req.user,
                stdin=req.stdin, timeout_s=self._limit(box, req.timeout_s)))

    def exec_stream(self, sid: str, req: ExecRequest, exec_id: str = "") -> Iterator[ExecChunk]:
        """ExecChunk items with output as it comes, then one carrying the reply. With an
        exec_id, cancel_exec(sid, exec_id) kills the command (its reader went away)."""
        self._get(sid)  # refused here, before anything runs
        stop = threading.Event()
        if exec_id:
            self._streams[(sid, exec_id)] = stop
        chunks: list[ExecChunk] = []
        cond = threading.Condition()
        result: list[ExecReply | Exception] = []

        def sink(stream: int, data: bytes) -> None:
            with cond:
                chunks.append(ExecChunk(stream, data))
                cond.notify()

        def work() -> None:
            r: ExecReply | Exception
            try:
                with self._use(sid) as box:
                    r = reply_of(box.sandbox.exec(
                        list(req.argv), env=dict(req.env) or None, cwd=req.cwd,
                        user=req.user, stdin=req.stdin, on_output=sink,
                        should_stop=stop.is_set, timeout_s=self._limit(box, req.timeout_s)))
            except Exception as err:
                r = err
            finally:
                self._streams.pop((sid, exec_id), None)
            with cond:
                result.append(r)
                cond.notify()

        threading.Thread(target=work, daemon=True, name=f"exec-{sid}").start()
        return _drain(chunks, cond, result)

    def cancel_exec(self, sid: str, exec_id: str) -> bool:
        """Kill a streamed command nobody reads any more; False if it is not running."""
        stop = self._streams.get((sid, exec_id))
        if stop is None:
            return False
        stop.set()
        return True

    # ---- processes (procs.py) --------------------------------------------------------------
    def proc_start(self, sid: str, req: ProcStart) -> ProcInfo:
        with self._use(sid) as box:
            return box.procs.start(box.sandbox.channel, req)

    def proc_run(self, sid: str, req: ProcStart, follow_id: str = "",
                 keepalive_s: float = 0.0) -> Iterator[ProcEvent]:
        """Start it, then follow it from its start: its START event carries its pid."""
        info = self.proc_start(sid, req)
        return self.proc_follow(sid, info.pid, True, keepalive_s, follow_id)

    def proc_list(self, sid: str) -> list[ProcInfo]:
        return self._get(sid).procs.infos()

    def proc_follow(self, sid: str, pid: int, replay: bool = True, keepalive_s: float = 0.0,
                    follow_id: str = "") -> Iterator[ProcEvent]:
        return self._get(sid).procs.follow(pid, replay, keepalive_s, follow_id)

    def proc_unfollow(self, sid: str, follow_id: str) -> bool:
        return self._get(sid).procs.unfollow(follow_id)

    def proc_signal(self, sid: str, pid: int, signum: int) -> None:
        with self._use(sid) as box:
            box.procs.signal(box.sandbox.channel, pid, signum)

    def proc_input(self, sid: str, pid: int, data: bytes, eof: bool = False) -> None:
        with self._use(sid) as box:
            box.procs.input(box.sandbox.channel, pid, data, eof)

    # ---- files -----------------------------------------------------------------------------
    def write(self, sid: str, path: str, data: bytes, mode: int = 0o644,
              append: bool = False) -> None:
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise BadRequest(f"mode must be 0 to 0o7777, got {mode!r}")
        with self._use(sid) as box:
            box.sandbox.channel.write_file(check_path(path), data, mode, append)

    def read(self, sid: str, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The whole file (length None, at most MAX_READ_BYTES), or up to `length` bytes
        (at most MAX_RANGE_BYTES) from offset: fewer only at the end of the file."""
        check_path(path)
        if (length is not None and not 1 <= length <= MAX_RANGE_BYTES) or offset < 0:
            raise BadRequest(f"offset {offset} must be >= 0 and length {length} from 1 to "
                             f"{MAX_RANGE_BYTES}")
        with self._use(sid) as box:
            ch = box.sandbox.channel
            if length is None:
                return ch.read_file(path, MAX_READ_BYTES) if offset == 0 else \
                    self._range(ch, path, offset, MAX_READ_BYTES)
            return self._range(ch, path, offset, length)

    @staticmethod
    def _range(ch: GuestChannel, path: str, offset: int, length: int) -> bytes:
        out = bytearray()
        while len(out) < length:
            data, eof = ch.read_range(path, offset + len(out), length - len(out))
            out += data
            if eof:
                break
        return bytes(out)

    def stat(self, sid: str, path: str) -> FileInfo:
        with self._use(sid) as box:
            return box.sandbox.channel.stat(check_path(path))

    def list_dir(self, sid: str, path: str, depth: int = 1) -> Listing:
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 16:
            raise BadRequest(f"depth must be 1 to 16, got {depth!r}")
        with self._use(sid) as box:
            entries, truncated = box.sandbox.channel.list_dir(check_path(path), depth)
        return Listing(path, tuple(entries), truncated)

    def mkdir(self, sid: str, path: str, parents: bool = True) -> bool:
        with self._use(sid) as box:
            return box.sandbox.channel.mkdir(check_path(path), bool(parents))

    def remove(self, sid: str, path: str, recursive: bool = False) -> None:
        if check_path(path) == "/":
            raise BadRequest("the root directory cannot be removed")
        with self._use(sid) as box:
            box.sandbox.channel.remove(path, bool(recursive))

    def move(self, sid: str, src: str, dst: str) -> FileInfo:
        with self._use(sid) as box:
            return box.sandbox.channel.move(check_path(src), check_path(dst))


def _drain(chunks: list[ExecChunk], cond: threading.Condition,
           result: list[ExecReply | Exception]) -> Iterator[ExecChunk]:
    while True:
        with cond:
            while not chunks and not result:
                cond.wait()
            pending, chunks[:] = list(chunks), []
            finished = list(result)
        yield from pending
        if finished:
            if isinstance(finished[0], Exception):
                raise finished[0]
            yield ExecChunk(reply=finished[0])
            return


__all__ = ["EXPIRY_GRACE_S", "OpenSandboxes", "check_path", "reply_of"]
