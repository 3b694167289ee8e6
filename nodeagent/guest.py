"""Host side of the guest channel: requests out, answers in, deadlines on the host's clock.

Everything the guest sends is untrusted: frames are size-limited msgpack maps decoded with
safe options (see images.guestagent.wire), every field is type-checked, output is capped here
as well as in the guest, and no deadline depends on the guest's clock.
"""

from __future__ import annotations

import signal as _signal
import socket
import time
from collections.abc import Callable
from typing import Any

from tryfleet.images.guestagent import wire
from tryfleet.wire import FileInfo

from .errors import Cancelled, GuestGone, GuestProtocolError, GuestRequestError, GuestUnresponsive
from .guest_files import MAX_LIST_ENTRIES, file_info, refusal
from .records import ExecResult

OutputSink = Callable[[int, bytes], None]
REQUEST_TIMEOUT_S = 30.0
REMOVE_TIMEOUT_S = 300.0  # removing a tree, or moving one across filesystems, takes a while
# After the host's deadline, how long the guest gets to report the killed command.
KILL_GRACE_S = 1.0


class GuestChannel:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = wire.FrameDecoder()
        self._pending: list[dict[str, Any]] = []
        self._next_id = 1
        self._closed = False

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
        if not self._closed:
            self._closed = True
            self._sock.close()

    # ---- plumbing --------------------------------------------------------------------------
    def _request(self, op: str, **fields: Any) -> int:
        req = self._take_id()
        self._send_all(wire.encode({"op": op, "id": req, **fields}))
        return req

    def _recv(self, deadline: float) -> dict[str, Any] | None:
        """Next message, or None when the deadline passes first."""
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                self._sock.settimeout(None if remaining == float("inf") else remaining)
                data = self._sock.recv(256 * 1024)
            except TimeoutError:
                return None
            except OSError as err:
                raise GuestGone(f"guest channel failed: {err}") from err
            if not data:
                raise GuestGone("guest channel closed: the guest powered off or crashed")
            try:
                self._pending.extend(self._decoder.feed(data))
            except wire.FrameError as err:
                raise GuestProtocolError(f"guest sent a malformed frame: {err}") from err
        return self._pending.pop(0)

    def _answer(self, req: int, op: str, timeout_s: float) -> dict[str, Any]:
        return self._next(req, op, time.monotonic() + timeout_s)

    def _next(self, req: int, op: str, deadline: float) -> dict[str, Any]:
        """The next message about request `req` (an error event raised as the error it is)."""
        while True:
            msg = self._recv(deadline)
            if msg is None:
                raise GuestUnresponsive(f"guest agent did not answer {op} in time")
            if msg.get("id") != req:
                continue  # a late answer to an earlier request
            if msg.get("ev") == "error":
                raise refusal(op, msg)
            return msg

    # ---- operations ------------------------------------------------------------------------
    def ping(self, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        msg = self._answer(self._request("ping"), "ping", timeout_s)
        if msg.get("ev") != "pong":
            raise GuestProtocolError(f"expected pong, got {_brief(msg)}")
        return msg

    def refresh(self, seed: bytes, timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Give the guest the host's clock and fresh entropy (after a snapshot restore)."""
        req = self._request("refresh", now=time.time(), seed=seed)
        return self._answer(req, "refresh", timeout_s)

    def wait_ready(self, deadline: float, interval_s: float = 1.0,
                   should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Ping until the agent answers. Until the guest opens its port, QEMU leaves what the
        host sends in the socket, so pings are sparse and never block: any pong will do."""
        next_ping = 0.0
        while True:
            if should_stop is not None and should_stop():
                raise Cancelled("stopped on request while the guest was booting")
            now = time.monotonic()
            if now >= deadline:
                raise GuestUnresponsive("guest agent did not come up before the boot deadline")
            if now >= next_ping:
                self._try_send({"op": "ping", "id": self._take_id()})
                next_ping = now + interval_s
            msg = self._recv(min(deadline, next_ping, now + 0.2))
            if msg is not None and msg.get("ev") == "pong":
                return msg

    def _take_id(self) -> int:
        req = self._next_id
        self._next_id += 1
        return req

    def _try_send(self, msg: dict[str, Any]) -> bool:
        """Send without blocking; False if the socket is full (the frame is not sent)."""
        data = wire.encode(msg)
        try:
            self._sock.setblocking(False)
            try:
                sent = self._sock.send(data)
            finally:
                self._sock.setblocking(True)
        except BlockingIOError:
            return False
        except OSError as err:
            raise GuestGone(f"guest channel closed while booting: {err}") from err
        if sent < len(data):  # the rest must follow, or the stream is broken
            self._send_all(data[sent:])
        return True

    def _send_all(self, data: bytes) -> None:
        self._sock.settimeout(REQUEST_TIMEOUT_S)
        try:
            self._sock.sendall(data)
        except OSError as err:
            raise GuestGone(f"guest channel closed while sending: {err}") from err

    def write_file(self, path: str, data: bytes, mode: int = 0o644,
                   append: bool = False) -> None:
        """The file made (or, with append, added to) with data, in chunks."""
        view = memoryview(data)
        first = True
        while first or view:
            chunk, view = view[: wire.CHUNK_BYTES], view[wire.CHUNK_BYTES:]
            req = self._request("write_file", path=path, data=bytes(chunk), mode=mode,
                                append=append or not first)
            self._answer(req, f"write_file {path}", REQUEST_TIMEOUT_S)
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
        req = self._request("read_file", path=path, offset=offset, length=length)
        msg = self._answer(req, f"read_file {path}", REQUEST_TIMEOUT_S)
        data = msg.get("data")
        if not isinstance(data, bytes) or len(data) > length:
            raise GuestProtocolError(f"bad read_file answer for {path}: {_brief(msg)}")
        return data, msg.get("eof") is True or not data

    def stat(self, path: str) -> FileInfo:
        """What the path is (a symlink not followed)."""
        msg = self._answer(self._request("stat", path=path), f"stat {path}", REQUEST_TIMEOUT_S)
        if msg.get("ev") != "entry":
            raise GuestProtocolError(f"bad stat answer for {path}: {_brief(msg)}")
        return file_info(msg.get("entry"), path=path)

    def list_dir(self, path: str, depth: int = 1, max_entries: int = MAX_LIST_ENTRIES,
                 timeout_s: float = REQUEST_TIMEOUT_S) -> tuple[list[FileInfo], bool]:
        """The entries below a directory to `depth` levels, at most max_entries of them, and
        whether there were more."""
        max_entries = max(1, min(max_entries, MAX_LIST_ENTRIES))
        req = self._request("list_dir", path=path, depth=depth, max_entries=max_entries)
        deadline = time.monotonic() + timeout_s
        entries: list[FileInfo] = []
        while True:
            msg = self._next(req, f"list_dir {path}", deadline)
            ev, raw = msg.get("ev"), msg.get("entries")
            if ev == "entries" and isinstance(raw, list) and \
                    len(entries) + len(raw) <= max_entries:
                entries += [file_info(r, under=path) for r in raw]
            elif ev == "done" and isinstance(msg.get("truncated"), bool):
                return entries, bool(msg["truncated"])
            else:
                raise GuestProtocolError(f"bad list_dir answer for {path} (after "
                                         f"{len(entries)} entries): {_brief(msg)}")

    def mkdir(self, path: str, parents: bool = True) -> bool:
        """Whether the directory was made (False: it was there)."""
        msg = self._answer(self._request("mkdir", path=path, parents=parents),
                           f"mkdir {path}", REQUEST_TIMEOUT_S)
        created = msg.get("created")
        if msg.get("ev") != "ok" or not isinstance(created, bool):
            raise GuestProtocolError(f"bad mkdir answer for {path}: {_brief(msg)}")
        return created

    def remove(self, path: str, recursive: bool = False) -> None:
        msg = self._answer(self._request("remove", path=path, recursive=recursive),
                           f"remove {path}", REMOVE_TIMEOUT_S)
        if msg.get("ev") != "ok":
            raise GuestProtocolError(f"bad remove answer for {path}: {_brief(msg)}")

    def move(self, src: str, dst: str) -> FileInfo:
        """src renamed to dst; what dst is now."""
        msg = self._answer(self._request("move", src=src, dst=dst), f"move {src} to {dst}",
                           REMOVE_TIMEOUT_S)
        if msg.get("ev") != "entry":
            raise GuestProtocolError(f"bad move answer for {src}: {_brief(msg)}")
        return file_info(msg.get("entry"), path=dst)

    def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout_s: float | None = None,
        max_output: int = 16 * 1024 * 1024,
        on_output: OutputSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> ExecResult:
        """Run argv in the guest, streaming output to on_output(stream, data) as it arrives."""
        started = time.monotonic()
        deadline = started + timeout_s if timeout_s else float("inf")
        size = wire.CHUNK_BYTES
        first, rest = (stdin[:size], stdin[size:]) if stdin else (stdin, b"")
        req = self._request("exec", argv=list(argv), env=env or {}, cwd=cwd, stdin=first,
                            stdin_open=bool(rest), timeout_s=timeout_s, max_output=max_output)
        for offset in range(0, len(rest), wire.CHUNK_BYTES):
            chunk = rest[offset:offset + wire.CHUNK_BYTES]
            self._request("stdin", target=req, data=chunk,
                          eof=offset + wire.CHUNK_BYTES >= len(rest))
        buffers = (bytearray(), bytearray())
        truncated = [False, False]
        timed_out = False
        killed_at: float | None = None
        while True:
            now = time.monotonic()
            if killed_at is None and (now >= deadline or (should_stop and should_stop())):
                timed_out = now >= deadline
                killed_at = now
                self._request("signal", target=req, signum=int(_signal.SIGKILL))
            if killed_at is not None and now >= killed_at + KILL_GRACE_S:
                return _result(None, None, buffers, truncated, timed_out, started)
            if killed_at is not None:
                wait_until = killed_at + KILL_GRACE_S
            else:
                wait_until = min(deadline, now + 0.2) if should_stop else deadline
            msg = self._recv(wait_until)
            if msg is None or msg.get("id") != req:
                continue
            ev = msg.get("ev")
            if ev == "out":
                stream, data = msg.get("stream"), msg.get("data")
                if stream not in (1, 2) or not isinstance(data, bytes):
                    raise GuestProtocolError(f"bad output event: {_brief(msg)}")
                buf = buffers[stream - 1]
                room = max_output - len(buf)
                if len(data) > room:
                    truncated[stream - 1] = True
                    data = data[:room]
                buf += data
                if on_output and data:
                    on_output(stream, data)
            elif ev == "exit":
                return self._exit_result(msg, buffers, truncated, timed_out, started)
            elif ev == "error":
                raise GuestRequestError(f"guest refused exec: {_text(msg.get('message'))}")

    def _exit_result(self, msg: dict[str, Any], buffers: tuple[bytearray, bytearray],
                     truncated: list[bool], timed_out: bool, started: float) -> ExecResult:
        code, sig, flags = msg.get("code"), msg.get("signal"), msg.get("truncated")
        if not (code is None or isinstance(code, int)) or not (sig is None or isinstance(sig, int)):
            raise GuestProtocolError(f"bad exit event: {_brief(msg)}")
        if isinstance(flags, list) and len(flags) == 2:
            truncated = [truncated[i] or flags[i] is True for i in range(2)]
        timed_out = timed_out or msg.get("timed_out") is True
        return _result(code, sig, buffers, truncated, timed_out, started)


def _result(code: int | None, sig: int | None, buffers: tuple[bytearray, bytearray],
            truncated: list[bool], timed_out: bool, started: float) -> ExecResult:
    return ExecResult(
        exit_code=code, signal=sig, stdout=bytes(buffers[0]), stderr=bytes(buffers[1]),
        stdout_truncated=truncated[0], stderr_truncated=truncated[1], timed_out=timed_out,
        duration_s=time.monotonic() - started,
    )


def _text(value: Any) -> str:
    return value[:500] if isinstance(value, str) else repr(value)[:500]


def _brief(msg: dict[str, Any]) -> str:
    return repr({k: (v[:40] if isinstance(v, (bytes, str)) else v) for k, v in msg.items()})[:300]
