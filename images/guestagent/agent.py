"""tryfleet guest agent: runs inside every sandbox VM, as PID 1, behind the virtio-serial port.

It answers msgpack frames from the host (see wire.py): exec with argv/env/cwd/user/stdin/deadline
(spawn.py) and output streamed as it is produced, stdin and signals for a running command
(several run at once, each under the id of the request that started it), ping, and files
(fsops.py): write, read, stat, list, mkdir, remove, move. A request that fails is answered
with an error event (with the errno name when the system refused it); nothing a request holds
can stop the agent, which is PID 1. One thread, one selector: process pipes, the channel, and
a wake-up pipe for SIGCHLD/SIGIO. Output beyond the per-stream cap is read and dropped (the
command never blocks on a full pipe) and reported as truncated; when the host reads slower
than commands write, the agent stops reading pipes rather than buffering without bound.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

try:
    from . import fsops, spawn, wire
except ImportError:  # run as a script inside the guest
    # agent.py, wire.py, fsops.py and spawn.py are copied into the guest side by side and
    # agent.py runs as a script: these top-level modules are the ones imported just above under
    # their package name, which mypy, checking the package, cannot see.
    import fsops  # type: ignore[import-not-found,no-redef]
    import spawn  # type: ignore[import-not-found,no-redef]
    import wire  # type: ignore[import-not-found,no-redef]

RequestError = fsops.RequestError
_field = fsops.field

READ_BYTES = 64 * 1024
OUT_HIGH_WATER = 4 * 1024 * 1024
OUT_LOW_WATER = 1024 * 1024
# After a command exits, how long its pipes may stay open (held by a background child).
PIPE_GRACE_S = 0.2
DISCONNECTED_POLL_S = 0.05


class Proc:
    __slots__ = (
        "cap", "deadline", "exited_at", "files", "pid", "popen", "req", "sent", "status",
        "stdin_buf", "stdin_eof", "stdin_fd", "streams", "timed_out", "truncated",
    )

    def __init__(self, req: int, popen: subprocess.Popen[bytes], cap: int, deadline: float | None):
        self.req = req
        self.popen = popen
        self.pid = popen.pid
        self.streams: dict[int, int] = {}  # fd -> 1 (stdout) | 2 (stderr)
        # The pipe objects own their fds: closing through them keeps a reused fd number safe.
        self.files = {f.fileno(): f for f in (popen.stdin, popen.stdout, popen.stderr) if f}
        self.stdin_fd: int | None = None
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.cap = cap
        self.sent = [0, 0]
        self.truncated = [False, False]
        self.deadline = deadline
        self.timed_out = False
        self.status: int | None = None
        self.exited_at = 0.0


class Agent(fsops.FileOps):
    def __init__(self, chan_fd: int, *, pid1: bool, use_signals: bool, exit_on_eof: bool,
                 fs_root: str = "/", switch_user: bool = False,
                 base_env: dict[str, str] | None = None) -> None:
        self.chan = chan_fd
        # Under every command's own environment: the egress proxy's variables, when granted.
        self.base_env = dict(base_env or {})
        # Whether a command that names a user runs with its uid, gid and groups (the agent
        # is root in a VM); the fake hypervisor's agent only gives it the user's environment.
        self.switch_user = switch_user
        # Guest paths resolve under fs_root: "/" in a VM, a scratch directory for the fake.
        self.fs_root = fs_root
        os.set_blocking(chan_fd, False)
        self.pid1 = pid1
        self.exit_on_eof = exit_on_eof
        self.sel = selectors.DefaultSelector()
        self.decoder = wire.FrameDecoder()
        self.out = bytearray()
        self.procs: dict[int, Proc] = {}
        self.by_fd: dict[int, Proc] = {}
        self.connected = True
        self.paused = False
        self.running = True
        self.started = time.monotonic()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self.use_signals = use_signals
        if use_signals:
            signal.set_wakeup_fd(self.wake_w)
            for sig in (signal.SIGCHLD, signal.SIGIO):
                signal.signal(sig, lambda *_: None)
        self.sel.register(chan_fd, selectors.EVENT_READ)

    # ---- main loop -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        finally:
            for proc in self.procs.values():
                self._kill(proc, signal.SIGKILL)
            for proc in list(self.procs.values()):
                if proc.status is None:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(proc.pid, 0)

    def _loop(self) -> None:
        while self.running:
            timeout = self._next_timeout()
            for key, events in self.sel.select(timeout):
                fd = key.fd
                if fd == self.wake_r:
                    self._drain_wake()
                elif fd == self.chan:
                    if events & selectors.EVENT_READ:
                        self._read_channel()
                    if events & selectors.EVENT_WRITE and self.connected:
                        self._flush()
                elif fd in self.by_fd:
                    proc = self.by_fd[fd]
                    if fd == proc.stdin_fd:
                        self._feed_stdin(proc)
                    else:
                        self._read_pipe(proc, fd)
            if not self.connected:
                self._probe_channel()
            self._reap()
            self._check_deadlines()
            self._finish_procs()
            self._update_interest()

    def _next_timeout(self) -> float:
        now = time.monotonic()
        timeout = 1.0 if self.use_signals else 0.01
        if not self.connected:
            timeout = min(timeout, DISCONNECTED_POLL_S)
        for proc in self.procs.values():
            if proc.deadline is not None and not proc.timed_out:
                timeout = min(timeout, proc.deadline - now)
            if proc.status is not None and proc.streams:
                timeout = min(timeout, proc.exited_at + PIPE_GRACE_S - now)
        return max(timeout, 0.0)

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # ---- channel ---------------------------------------------------------------------------
    def _read_channel(self) -> None:
        try:
            data = os.read(self.chan, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EIO):
                raise
            data = b""
        if not data:
            self._disconnected()
            return
        try:
            messages = self.decoder.feed(data)
        except wire.FrameError as err:
            self._log(f"dropping host stream: {err}")
            self.decoder = wire.FrameDecoder()
            return
        for msg in messages:
            self._handle(msg)

    def _disconnected(self) -> None:
        if self.exit_on_eof:
            self.running = False
            return
        # A virtio port whose host side is closed reads as EOF until the host reconnects.
        self.connected = False
        self.decoder = wire.FrameDecoder()
        self.out.clear()
        self.sel.unregister(self.chan)

    def _probe_channel(self) -> None:
        try:
            data = os.read(self.chan, READ_BYTES)
        except BlockingIOError:
            data = None  # host is back, nothing sent yet
        except OSError:
            return
        if data == b"":
            return
        self.connected = True
        self.sel.register(self.chan, selectors.EVENT_READ)
        if data:
            for msg in self.decoder.feed(data):
                self._handle(msg)

    def _send(self, msg: dict[str, Any]) -> None:
        if self.connected:
            self.out += wire.encode(msg)

    def _flush(self) -> None:
        try:
            n = os.write(self.chan, self.out[:READ_BYTES])
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.EIO):
                self._disconnected()
                return
            raise
        del self.out[:n]

    def _update_interest(self) -> None:
        if self.connected:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
            self.sel.modify(self.chan, events)
        should_pause = len(self.out) > OUT_HIGH_WATER
        if should_pause == self.paused or (self.paused and len(self.out) > OUT_LOW_WATER):
            return
        self.paused = should_pause
        for proc in self.procs.values():
            for fd in proc.streams:
                if should_pause:
                    self.sel.unregister(fd)
                else:
                    self.sel.register(fd, selectors.EVENT_READ)

    # ---- requests --------------------------------------------------------------------------
    def _handle(self, msg: dict[str, Any]) -> None:
        req = msg.get("id")
        if not isinstance(req, int):
            self._log(f"request without an integer id: {str(msg)[:200]}")
            return
        handlers = {
            "ping": self._op_ping,
            "exec": self._op_exec,
            "stdin": self._op_stdin,
            "signal": self._op_signal,
            "write_file": self._op_write_file,
            "read_file": self._op_read_file,
            "stat": self._op_stat,
            "list_dir": self._op_list_dir,
            "mkdir": self._op_mkdir,
            "remove": self._op_remove,
            "move": self._op_move,
            "refresh": self._op_refresh,
        }
        handler = handlers.get(msg.get("op"))  # type: ignore[arg-type]
        try:
            if handler is None:
                raise RequestError(f"unknown op {msg.get('op')!r}")
            handler(req, msg)
        except Exception as err:  # whatever a request does, PID 1 answers and keeps serving
            code = fsops.error_code(err) if isinstance(err, OSError) else \
                getattr(err, "code", None)
            self._send({"ev": "error", "id": req, "message": fsops.text(str(err))[:2000],
                        "code": code})

    def _op_ping(self, req: int, msg: dict[str, Any]) -> None:
        uptime = time.monotonic() - self.started
        self._send({"ev": "pong", "id": req, "version": wire.PROTOCOL_VERSION, "uptime_s": uptime})

    def _op_refresh(self, req: int, msg: dict[str, Any]) -> None:
        """A guest restored from a snapshot wakes with the clock and the random state of the
        moment it was saved: take the host's time and fresh entropy, so no two restored
        guests share either. Only in a real guest (PID 1); the fake leaves the host alone."""
        now = _field(msg, "now", (int, float))
        seed = _field(msg, "seed", bytes, b"") or b""
        clock_set = seeded = False
        if self.pid1:
            time.clock_settime(time.CLOCK_REALTIME, float(now))
            clock_set = True
            if seed:
                with open("/dev/urandom", "wb") as fh:
                    fh.write(seed[:4096])
                seeded = True
        self._send({"ev": "ok", "id": req, "clock_set": clock_set, "seeded": seeded})

    def _op_exec(self, req: int, msg: dict[str, Any]) -> None:
        if req in self.procs:
            raise RequestError(f"exec id {req} is already running")
        spec = spawn.parse(msg, self.fs_root, self.base_env)
        cwd = self._path(spec.cwd)
        try:
            popen = subprocess.Popen(
                spec.argv, stdin=subprocess.PIPE if (spec.stdin or spec.stdin_open)
                else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=spec.env, start_new_session=True, close_fds=True,
                **spawn.identity(spec, self.switch_user),
            )
        except OSError as err:
            code = 126 if isinstance(err, PermissionError) else 127
            message = (f"tryfleet-agent: cannot run {spec.argv[0]!r} in {cwd!r}: "
                       f"{err.strerror}\n")
            self._send({"ev": "started", "id": req, "pid": 0})
            self._send({"ev": "out", "id": req, "stream": 2, "data": message.encode()})
            self._send({"ev": "exit", "id": req, "code": code, "signal": None, "timed_out": False,
                        "truncated": [False, False]})
            return
        deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
        proc = Proc(req, popen, spec.cap, deadline)
        for stream, pipe in ((1, popen.stdout), (2, popen.stderr)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            proc.streams[fd] = stream
            self.by_fd[fd] = proc
            if not self.paused:
                self.sel.register(fd, selectors.EVENT_READ)
        if popen.stdin is not None:
            proc.stdin_fd = popen.stdin.fileno()
            os.set_blocking(proc.stdin_fd, False)
            self.by_fd[proc.stdin_fd] = proc
            proc.stdin_buf += spec.stdin or b""
            proc.stdin_eof = not spec.stdin_open
            self.sel.register(proc.stdin_fd, selectors.EVENT_WRITE)
        self.procs[req] = proc
        self._send({"ev": "started", "id": req, "pid": popen.pid})

    def _target(self, msg: dict[str, Any]) -> Proc:
        target = _field(msg, "target", int)
        proc = self.procs.get(target)
        if proc is None:
            raise RequestError(f"no running exec with id {target}")
        return proc

    def _op_stdin(self, req: int, msg: dict[str, Any]) -> None:
        proc = self._target(msg)
        if proc.stdin_fd is None:
            raise RequestError(f"exec {proc.req} was started without an open stdin")
        proc.stdin_buf += _field(msg, "data", bytes, b"") or b""
        proc.stdin_eof = proc.stdin_eof or bool(_field(msg, "eof", bool, False))
        self._send({"ev": "ok", "id": req})

    def _op_signal(self, req: int, msg: dict[str, Any]) -> None:
        proc = self._target(msg)
        signum = _field(msg, "signum", int)
        self._kill(proc, signum)
        self._send({"ev": "ok", "id": req})

    def _path(self, path: str) -> str:
        if not path.startswith("/"):
            raise RequestError(f"path must be absolute, got {path!r}")
        if self.fs_root == "/":
            return path
        return os.path.join(self.fs_root, os.path.normpath(path).lstrip("/"))

    # ---- processes -------------------------------------------------------------------------
    def _feed_stdin(self, proc: Proc) -> None:
        fd = proc.stdin_fd
        assert fd is not None
        try:
            if proc.stdin_buf:
                del proc.stdin_buf[:os.write(fd, proc.stdin_buf[:READ_BYTES])]
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin: nothing more can be delivered
            proc.stdin_buf.clear()
            proc.stdin_eof = True
        if not proc.stdin_buf and proc.stdin_eof:
            self._close_fd(proc, fd)
            proc.stdin_fd = None

    def _read_pipe(self, proc: Proc, fd: int) -> None:
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            return
        if not data:
            self._close_fd(proc, fd)
            return
        stream = proc.streams[fd]
        room = proc.cap - proc.sent[stream - 1]
        if len(data) > room:
            proc.truncated[stream - 1] = True
            data = data[:max(room, 0)]
        if data:
            proc.sent[stream - 1] += len(data)
            self._send({"ev": "out", "id": proc.req, "stream": stream, "data": data})

    def _close_fd(self, proc: Proc, fd: int) -> None:
        # Output pipes are out of the selector while paused; stdin is always in it.
        registered = not (fd in proc.streams and self.paused)
        proc.streams.pop(fd, None)
        if registered:
            self.sel.unregister(fd)
        self.by_fd.pop(fd, None)
        proc.files.pop(fd).close()

    def _kill(self, proc: Proc, signum: int) -> None:
        if proc.status is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    def _reap(self) -> None:
        if self.pid1:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                self._record(pid, status)
        else:
            for proc in list(self.procs.values()):
                if proc.status is None:
                    pid, status = os.waitpid(proc.pid, os.WNOHANG)
                    if pid:
                        self._record(pid, status)

    def _record(self, pid: int, status: int) -> None:
        for proc in self.procs.values():
            if proc.pid == pid and proc.status is None:
                proc.status = status
                proc.exited_at = time.monotonic()
                proc.popen.returncode = os.waitstatus_to_exitcode(status)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for proc in self.procs.values():
            if proc.deadline is not None and not proc.timed_out and now >= proc.deadline:
                proc.timed_out = True
                self._kill(proc, signal.SIGKILL)

    def _finish_procs(self) -> None:
        now = time.monotonic()
        for req, proc in list(self.procs.items()):
            if proc.status is None:
                continue
            if proc.streams and now < proc.exited_at + PIPE_GRACE_S:
                continue
            for fd in list(proc.streams):
                self._read_pipe(proc, fd)  # whatever is left in the pipe, then let go
                if fd in proc.streams:
                    self._close_fd(proc, fd)
            if proc.stdin_fd is not None:
                self._close_fd(proc, proc.stdin_fd)
                proc.stdin_fd = None
            code = sig = None
            if os.WIFSIGNALED(proc.status):
                sig = os.WTERMSIG(proc.status)
            else:
                code = os.WEXITSTATUS(proc.status)
            self._send({"ev": "exit", "id": req, "code": code, "signal": sig,
                        "timed_out": proc.timed_out, "truncated": proc.truncated})
            del self.procs[req]

    def _log(self, text: str) -> None:
        print(f"tryfleet-agent: {text}", file=sys.stderr, flush=True)


def find_port(name: str = wire.PORT_NAME, timeout_s: float = 10.0) -> str:
    """The /dev node of the virtio-serial port called `name` (no udev symlinks in the guest)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
            with open(name_file) as fh:
                if fh.read().strip() == name:
                    return "/dev/" + name_file.split("/")[-2]
        if time.monotonic() > deadline:
            raise SystemExit(f"tryfleet-agent: no virtio port named {name}")
        time.sleep(0.05)


def main() -> None:
    path = find_port()
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    # The port raises SIGIO when the host side connects or disconnects.
    fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    try:
        with open("/proc/cmdline") as fh:
            cmdline = fh.read()
    except OSError:
        cmdline = ""
    agent = Agent(fd, pid1=os.getpid() == 1, use_signals=True, exit_on_eof=False,
                  switch_user=os.geteuid() == 0, base_env=spawn.egress_env(cmdline))
    print(f"tryfleet-agent: ready on {path}", file=sys.stderr, flush=True)
    agent.run()


if __name__ == "__main__":
    main()
