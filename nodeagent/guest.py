"""Host side of the guest channel: requests out, answers in, deadlines on the host's clock.

Several threads may make requests at once (exec, files, pings, processes): one reader routes
each answer to its request by id (guest_mux.py). Everything the guest sends is untrusted:
frames are size-limited msgpack maps decoded with safe options (see images.guestagent.wire),
every field is type-checked, output is capped here as well as in the guest, what is queued for
a request is bounded, and no deadline depends on the guest's clock.
"""

from __future__ import annotations

import contextlib
import signal as _signal
import socket
import time
from collections.abc import Callable
from typing import Any

from tryfleet.images.guestagent import wire
from tryfleet.wire import FileInfo

from .errors import (
    Cancelled,
    GuestError,
    GuestGone,
    GuestProtocolError,
    GuestRequestError,
    GuestUnresponsive,
)
from .guest_files import MAX_LIST_ENTRIES, file_info, refusal
from .guest_mux import DISCARD, GuestMux, Inbox, Route
from .records import ExecResult

OutputSink = Callable[[int, bytes], None]
REQUEST_TIMEOUT_S = 30.0
REMOVE_TIMEOUT_S = 300.0  # removing a tree, or moving one across filesystems, takes a while
# After the host's deadline, how long the guest gets to report the killed command.
KILL_GRACE_S = 1.0


class GuestChannel:
    """Requests to one guest agent; any number of threads may make them at once (see
    guest_mux.py for how their answers are told apart)."""

    def __init__(self, sock: socket.socket, name: str = "") -> None:
        self._mux = GuestMux(sock, name)

    @classmethod
    def connect_unix(cls, path: str) -> GuestChannel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as err:
            sock.close()
            raise GuestGone(f"cannot connect to guest channel {path}: {err}") from err
        return cls(sock)

    def close(self) -> None:
        """Every request still waiting fails with GuestGone."""
        self._mux.close()

    @property
    def dropped_frames(self) -> int:
        """Frames the guest sent for no request the host knows (dropped)."""
        return self._mux.dropped_frames

    @property
    def error(self) -> GuestError | None:
        """Why the channel failed (None while it works)."""
        return self._mux.error

    # ---- plumbing --------------------------------------------------------------------------
    def _call(self, op: str, what: str, timeout_s: float, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its one answer (an error event raised as the error
        it is)."""
        inbox = Inbox()
        req = self._mux.request(inbox, op, **fields)
        try:
            return self._next(inbox, what, time.monotonic() + timeout_s)
        finally:
            self._mux.abandon(req)  # if it is still waited for: answered, it is forgotten

    @staticmethod
    def _next(inbox: Inbox, what: str, deadline: float) -> dict[str, Any]:
        """The next answer in inbox (an error event raised as the error it is)."""
        msg = inbox.get(deadline)
        if msg is None:
            raise GuestUnresponsive(f"guest agent did not answer {what} in time")
        if msg.get("ev") == "error":
            raise refusal(what, msg)
        return msg

    def _tell(self, op: str, **fields: Any) -> int:
        """Send a request whose answer nobody waits for."""
        return self._mux.request(DISCARD, op, **fields)

    # ---- operations ------------------------------------------------------------------------
    def ping(self, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        msg = self._call("ping", "ping", timeout_s)
        if msg.get("ev") != "pong":
            raise GuestProtocolError(f"expected pong, got {_brief(msg)}")
        return msg

    def refresh(self, seed: bytes, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Give the guest the host's clock and fresh entropy (after a snapshot restore)."""
        return self._call("refresh", "refresh", timeout_s, now=time.time(), seed=seed)

    def wait_ready(self, deadline: float, interval_s: float = 1.0,
                   should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Ping until the agent answers. Until the guest opens its port, QEMU leaves what the
        host sends in the socket, so pings are sparse and never block: any pong will do."""
        inbox = Inbox()
        sent: list[int] = []
        next_ping = 0.0
        try:
            while True:
                if should_stop is not None and should_stop():
                    raise Cancelled("stopped on request while the guest was booting")
                now = time.monotonic()
                if now >= deadline:
                    raise GuestUnresponsive("guest agent did not come up before the boot "
                                            "deadline")
                if now >= next_ping:
                    req = self._mux.try_request(inbox, "ping")
                    if req is not None:
                        sent.append(req)
                    next_ping = now + interval_s
                msg = inbox.get(min(deadline, next_ping, now + 0.2))
                if msg is not None and msg.get("ev") == "pong":
                    return msg
        finally:
            for req in sent:  # the other pings' pongs, when they come, are taken quietly
                self._mux.abandon(req)

    def write_file(self, path: str, data: bytes, mode: int = 0o644,
                   append: bool = False) -> None:
        """The file made (or, with append, added to) with data, in chunks."""
        view = memoryview(data)
        first = True
        while first or view:
            chunk, view = view[: wire.CHUNK_BYTES], view[wire.CHUNK_BYTES:]
            self._call("write_file", f"write_file {path}", REQUEST_TIMEOUT_S, path=path,
                       data=bytes(chunk), mode=mode, append=append or not first)
            first = False

    def read_file(self, path: str, max_bytes: int) -> bytes:
        out = bytearray()
        while True:
            data, eof = self.read_range(path, len(out), min(wire.CHUNK_BYTES,
                                                            max_bytes - len(out) + 1))
            out += data
            if len(out) > max_bytes:
                raise GuestRequestError(f"{path} is larger than the {max_bytes}-byte limit")
            if eof:
                return bytes(out)

    def read_range(self, path: str, offset: int, length: int) -> tuple[bytes, bool]:
        """Up to `length` bytes (at most one wire chunk) from offset, and whether that was
        the end of the file."""
        length = max(1, min(length, wire.CHUNK_BYTES))
        msg = self._call("read_file", f"read_file {path}", REQUEST_TIMEOUT_S, path=path,
                         offset=offset, length=length)
        data = msg.get("data")
        if not isinstance(data, bytes) or len(data) > length:
            raise GuestProtocolError(f"bad read_file answer for {path}: {_brief(msg)}")
        return data, msg.get("eof") is True or not data

    def stat(self, path: str) -> FileInfo:
        """What the path is (a symlink not followed)."""
        msg = self._call("stat", f"stat {path}", REQUEST_TIMEOUT_S, path=path)
        if msg.get("ev") != "entry":
            raise GuestProtocolError(f"bad stat answer for {path}: {_brief(msg)}")
        return file_info(msg.get("entry"), path=path)

    def list_dir(self, path: str, depth: int = 1, max_entries: int = MAX_LIST_ENTRIES,
                 timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[list[FileInfo], bool]:
        """The entries below a directory to `depth` levels, at most max_entries of them, and
        whether there were more."""
        max_entries = max(1, min(max_entries, MAX_LIST_ENTRIES))
        inbox = Inbox()
        req = self._mux.request(inbox, "list_dir", path=path, depth=depth,
                                max_entries=max_entries)
        deadline = time.monotonic() + timeout_s
        entries: list[FileInfo] = []
        try:
            while True:
                msg = self._next(inbox, f"list_dir {path}", deadline)
                ev, raw = msg.get("ev"), msg.get("entries")
                if ev == "entries" and isinstance(raw, list) and \
                        len(entries) + len(raw) <= max_entries:
                    entries += [file_info(r, under=path) for r in raw]
                elif ev == "done" and isinstance(msg.get("truncated"), bool):
                    return entries, bool(msg["truncated"])
                else:
                    raise GuestProtocolError(f"bad list_dir answer for {path} (after "
                                             f"{len(entries)} entries): {_brief(msg)}")
        finally:
            self._mux.abandon(req)

    def mkdir(self, path: str, parents: bool = True) -> bool:
        """Whether the directory was made (False: it was there)."""
        msg = self._call("mkdir", f"mkdir {path}", REQUEST_TIMEOUT_S, path=path,
                         parents=parents)
        created = msg.get("created")
        if msg.get("ev") != "ok" or not isinstance(created, bool):
            raise GuestProtocolError(f"bad mkdir answer for {path}: {_brief(msg)}")
        return created

    def remove(self, path: str, recursive: bool = False) -> None:
        msg = self._call("remove", f"remove {path}", REMOVE_TIMEOUT_S, path=path,
                         recursive=recursive)
        if msg.get("ev") != "ok":
            raise GuestProtocolError(f"bad remove answer for {path}: {_brief(msg)}")

    def move(self, src: str, dst: str) -> FileInfo:
        """src renamed to dst; what dst is now."""
        msg = self._call("move", f"move {src} to {dst}", REMOVE_TIMEOUT_S, src=src, dst=dst)
        if msg.get("ev") != "entry":
            raise GuestProtocolError(f"bad move answer for {src}: {_brief(msg)}")
        return file_info(msg.get("entry"), path=dst)

    def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        stdin: bytes | None = None,
        timeout_s: float | None = None,
        max_output: int = 16 * 1024 * 1024,
        on_output: OutputSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ExecResult:
        """Run argv in the guest (as `user`, root when None), streaming output to
        on_output(stream, data) as it arrives; the host's deadline and output cap hold
        whatever the guest does."""
        run = _Exec(time.monotonic(), timeout_s, max_output, on_output, should_stop)
        size = wire.CHUNK_BYTES
        first, rest = (stdin[:size], stdin[size:]) if stdin else (stdin, b"")
        inbox = Inbox()
        req = self.spawn(inbox, argv, env=env, cwd=cwd, user=user, stdin=first,
                         stdin_open=bool(rest), timeout_s=timeout_s, max_output=max_output)
        try:
            for offset in range(0, len(rest), size):
                self._tell("stdin", target=req, data=rest[offset:offset + size],
                           eof=offset + size >= len(rest))
            return self._follow_exec(req, inbox, run)
        except GuestError as err:
            if not isinstance(err, GuestGone):  # the command need not outlive its caller
                with contextlib.suppress(GuestError):
                    self._tell("signal", target=req, signum=int(_signal.SIGKILL))
            raise
        finally:
            self._mux.abandon(req)  # its exit, if it is still to come, taken quietly

    def _follow_exec(self, req: int, inbox: Inbox, run: _Exec) -> ExecResult:
        while True:
            now = time.monotonic()
            stop = run.should_stop is not None and run.should_stop()
            if run.killed_at is None and (now >= run.deadline or stop):
                run.timed_out = now >= run.deadline
                run.killed_at = now
                self._tell("signal", target=req, signum=int(_signal.SIGKILL))
            if run.killed_at is not None and now >= run.killed_at + KILL_GRACE_S:
                return run.result(None, None)
            if run.killed_at is not None:
                wait_until = run.killed_at + KILL_GRACE_S
            else:
                wait_until = min(run.deadline, now + 0.2) if run.should_stop else run.deadline
            msg = inbox.get(wait_until)
            if msg is None:
                continue
            ev = msg.get("ev")
            if ev == "out":
                run.output(msg)
            elif ev == "exit":
                return run.exited(msg)
            elif ev == "error":
                raise refusal("exec", msg)
            elif ev != "started":
                raise GuestProtocolError(f"bad exec answer: {_brief(msg)}")

    # ---- processes (followed by a Route of the caller's: see procs.py) ----------------------
    def spawn(self, route: Route, argv: list[str], *, env: dict[str, str] | None = None,
              cwd: str | None = None, user: str | None = None, stdin: bytes | None = None,
              stdin_open: bool = False, timeout_s: float | None = None,
              max_output: int = 16 * 1024 * 1024) -> int:
        """Start argv in the guest, its answers (`started` with its pid, `out`, then `exit`
        or `error`) going to route; the request's id, which signal() and send_stdin() name."""
        fields: dict[str, Any] = {
            "argv": list(argv), "env": env or {}, "cwd": cwd, "stdin": stdin,
            "stdin_open": stdin_open, "timeout_s": timeout_s or None, "max_output": max_output}
        if user is not None:
            fields["user"] = user
        return self._mux.request(route, "exec", **fields)

    def signal(self, target: int, signum: int, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """Send signum to the process group of the command started by request `target`."""
        self._call("signal", f"signal {signum}", timeout_s, target=target, signum=signum)

    def send_stdin(self, target: int, data: bytes, eof: bool = False,
                   timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        """Data for the stdin of the command started by request `target` (in chunks, each
        taken by the guest before the next goes); with eof, its stdin closed after it."""
        view = memoryview(data)
        while True:
            chunk, view = view[:wire.CHUNK_BYTES], view[wire.CHUNK_BYTES:]
            last = not view
            self._call("stdin", "stdin", timeout_s, target=target, data=bytes(chunk),
                       eof=eof and last)
            if last:
                return

    def abandon(self, req: int) -> None:
        """Stop following request `req`: what the guest still sends for it is taken quietly."""
        self._mux.abandon(req)


class _Exec:
    """One exec as the host keeps it: its output under the host's cap, its deadline."""

    def __init__(self, started: float, timeout_s: float | None, max_output: int,
                 on_output: OutputSink | None, should_stop: Callable[[], bool] | None) -> None:
        self.started = started
        self.deadline = started + timeout_s if timeout_s else float("inf")
        self.max_output, self.on_output, self.should_stop = max_output, on_output, should_stop
        self.buffers = (bytearray(), bytearray())
        self.truncated = [False, False]
        self.timed_out = False
        self.killed_at: float | None = None

    def output(self, msg: dict[str, Any]) -> None:
        stream, data = msg.get("stream"), msg.get("data")
        if stream not in (1, 2) or not isinstance(data, bytes):
            raise GuestProtocolError(f"bad output event: {_brief(msg)}")
        buf = self.buffers[stream - 1]
        room = self.max_output - len(buf)
        if len(data) > room:
            self.truncated[stream - 1] = True
            data = data[:room]
        buf += data
        if self.on_output and data:
            self.on_output(stream, data)

    def exited(self, msg: dict[str, Any]) -> ExecResult:
        code, sig, flags = msg.get("code"), msg.get("signal"), msg.get("truncated")
        if not (code is None or type(code) is int) or not (sig is None or type(sig) is int):
            raise GuestProtocolError(f"bad exit event: {_brief(msg)}")
        if isinstance(flags, list) and len(flags) == 2:
            self.truncated = [self.truncated[i] or flags[i] is True for i in range(2)]
        self.timed_out = self.timed_out or msg.get("timed_out") is True
        return self.result(code, sig)

    def result(self, code: int | None, sig: int | None) -> ExecResult:
        return _result(code, sig, self.buffers, self.truncated, self.timed_out, self.started)


def _result(code: int | None, sig: int | None, buffers: tuple[bytearray, bytearray],
            truncated: list[bool], timed_out: bool, started: float) -> ExecResult:
    return ExecResult(
        exit_code=code, signal=sig, stdout=bytes(buffers[0]), stderr=bytes(buffers[1]),
        stdout_truncated=truncated[0], stderr_truncated=truncated[1], timed_out=timed_out,
        duration_s=time.monotonic() - started,
    )


def _brief(msg: dict[str, Any]) -> str:
    return repr({k: (v[:40] if isinstance(v, (bytes, str)) else v) for k, v in msg.items()})[:300]
