"""The guest channel multiplexed: many requests in flight at once over one socket.

One reader thread per channel reads every frame the guest sends and hands it to the route of
the request it names (by id): an Inbox, a bounded queue a waiting thread reads from, or any
other Route (a process the node follows calls back from the reader thread). Senders share the
socket under a lock, one whole frame at a time.

The guest is hostile: a frame for a request the host does not know is dropped and counted; an
Inbox that the guest fills faster than its reader empties it (MAX_INBOX_BYTES or
MAX_INBOX_FRAMES unread) fails that request alone; a channel that closes or carries a frame
that does not decode fails every request with GuestGone or GuestProtocolError, and so does
every request made after it. Memory held for the guest is bounded by the routes' own bounds.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections import deque
from typing import Any, Protocol

from tryfleet.images.guestagent import wire

from .errors import GuestError, GuestGone, GuestProtocolError

log = logging.getLogger("tryfleet.nodeagent")

READ_BYTES = 256 * 1024
SEND_TIMEOUT_S = 30.0
MAX_INBOX_BYTES = 16 * 1024 * 1024
MAX_INBOX_FRAMES = 16_384
# Answers that end a request: its id is forgotten once one is routed.
_LAST = frozenset({"pong", "ok", "exit", "entry", "data", "done", "error"})
_DROP_LOG_EVERY = 1000


class Route(Protocol):
    """Where the frames of one request go. Both are called on the reader thread: quick,
    never blocking, never raising."""

    def deliver(self, msg: dict[str, Any], size: int) -> bool:
        """Take one frame (size: its bytes on the wire); False when the request is over
        (its id is then forgotten)."""
        ...

    def fail(self, err: GuestError) -> None:
        """The channel failed: no frame will come any more."""
        ...


def more(msg: dict[str, Any]) -> bool:
    """Whether more answers follow this one to the same request."""
    return msg.get("ev") not in _LAST


def fresh(err: GuestError) -> GuestError:
    """A new exception like err: one instance raised in several threads would share (and
    garble) one traceback."""
    return type(err)(str(err))


class Inbox:
    """The frames of one or more requests, for the thread that waits on them; bounded. A
    request's id is forgotten after its last answer (see more())."""

    def __init__(self, max_bytes: int | None = None, max_frames: int | None = None) -> None:
        self._cond = threading.Condition()
        self._frames: deque[tuple[int, dict[str, Any]]] = deque()
        self._bytes = 0
        self._max_bytes = MAX_INBOX_BYTES if max_bytes is None else max_bytes
        self._max_frames = MAX_INBOX_FRAMES if max_frames is None else max_frames
        self._error: GuestError | None = None

    def deliver(self, msg: dict[str, Any], size: int) -> bool:
        with self._cond:
            if self._error is not None:
                return False
            if self._bytes + size > self._max_bytes or len(self._frames) >= self._max_frames:
                # The frames queued are of no use to a request that fails: let them go.
                self._frames.clear()
                self._bytes = 0
                self._error = GuestProtocolError(
                    f"guest sent more for request {msg.get('id')!r} than the host keeps unread "
                    f"({self._max_bytes} bytes or {self._max_frames} frames): a flood")
                self._cond.notify_all()
                return False
            self._frames.append((size, msg))
            self._bytes += size
            self._cond.notify_all()
            return more(msg)

    def fail(self, err: GuestError) -> None:
        with self._cond:
            if self._error is None:
                self._error = err
            self._cond.notify_all()

    def get(self, deadline: float) -> dict[str, Any] | None:
        """The next frame (the ones that came before a failure first); None when the host's
        monotonic deadline passes first; the channel's or the flood's error once there is
        no frame left."""
        with self._cond:
            while not self._frames:
                if self._error is not None:
                    raise fresh(self._error)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(None if remaining == float("inf") else remaining)
            size, msg = self._frames.popleft()
            self._bytes -= size
            return msg


class _Discard:
    """Answers nobody waits for any more (a request given up on, a ping after the first
    pong): taken quietly until the last one."""

    def deliver(self, msg: dict[str, Any], size: int) -> bool:
        return more(msg)

    def fail(self, err: GuestError) -> None:
        pass


DISCARD: Route = _Discard()


class GuestMux:
    def __init__(self, sock: socket.socket, name: str = "") -> None:
        self._sock = sock
        sock.settimeout(None)  # blocking reads; sends never block (MSG_DONTWAIT and poll)
        self._fd = sock.fileno()
        self._routes: dict[int, Route] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._next_id = 1
        self._error: GuestError | None = None
        self._closing = False
        self.dropped_frames = 0
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"guest-reader-{name or self._fd}")
        self._reader.start()

    # ---- requests --------------------------------------------------------------------------
    def request(self, route: Route, op: str, **fields: Any) -> int:
        """Send a request whose answers go to route; its id."""
        req = self._register(route)
        try:
            self._send(wire.encode({"op": op, "id": req, **fields}))
        except BaseException:
            self.release(req)
            raise
        return req

    def try_request(self, route: Route, op: str, **fields: Any) -> int | None:
        """request() only if the socket takes the frame now (None: not sent). Until the guest
        opens its port, QEMU leaves what the host sends in the socket: this never blocks."""
        if self._error is not None:
            raise fresh(self._error)
        if not self._writable(0.0):
            return None
        return self.request(route, op, **fields)

    def release(self, req: int) -> None:
        """Forget a request: what the guest still sends for it is dropped as unknown."""
        with self._lock:
            self._routes.pop(req, None)

    def abandon(self, req: int) -> None:
        """Give up waiting on a request: its remaining answers are taken quietly (nothing to
        do for one whose last answer came)."""
        with self._lock:
            if req in self._routes:
                self._routes[req] = DISCARD

    def _register(self, route: Route) -> int:
        with self._lock:
            if self._error is not None:
                raise fresh(self._error)
            req = self._next_id
            self._next_id += 1
            self._routes[req] = route
            return req

    @property
    def error(self) -> GuestError | None:
        """Why the channel failed (None while it works)."""
        return self._error

    def pending(self) -> int:
        """Requests whose answers are still routed (abandoned ones included)."""
        with self._lock:
            return len(self._routes)

    # ---- sending ---------------------------------------------------------------------------
    def _send(self, data: bytes, timeout_s: float = SEND_TIMEOUT_S) -> None:
        """One whole frame, or GuestGone: a frame cut short would break the stream, so a send
        that fails midway fails the channel."""
        deadline = time.monotonic() + timeout_s
        with self._send_lock:
            view = memoryview(data)
            while view:
                if self._error is not None:
                    raise fresh(self._error)
                try:
                    view = view[self._sock.send(view, socket.MSG_DONTWAIT):]
                    continue
                except BlockingIOError:
                    pass
                except OSError as err:
                    raise self._broken(f"guest channel closed while sending: {err}") from err
                if not self._writable(deadline - time.monotonic()):
                    if len(view) == len(data):
                        raise GuestGone(f"guest did not read the channel for {timeout_s:.0f} s")
                    raise self._broken(f"guest stopped reading the channel mid-frame for "
                                       f"{timeout_s:.0f} s")

    def _writable(self, timeout_s: float) -> bool:
        if self._error is not None or timeout_s < 0:
            return False
        poller = select.poll()
        poller.register(self._fd, select.POLLOUT)
        try:
            return bool(poller.poll(int(timeout_s * 1000)))
        except OSError:
            return False

    def _broken(self, why: str) -> GuestError:
        err = GuestGone(why)
        self._fail(err)
        return fresh(err)

    # ---- reading ---------------------------------------------------------------------------
    def _read_loop(self) -> None:
        decoder = wire.FrameDecoder()
        err: GuestError
        try:
            while True:
                try:
                    data = self._sock.recv(READ_BYTES)
                except OSError as e:
                    err = GuestGone(f"guest channel failed: {e}")
                    break
                if not data:
                    err = GuestGone("guest channel closed by the host" if self._closing else
                                    "guest channel closed: the guest powered off or crashed")
                    break
                try:
                    frames = decoder.feed_sized(data)
                except wire.FrameError as e:
                    err = GuestProtocolError(f"guest sent a malformed frame: {e}")
                    break
                for size, msg in frames:
                    self._route(msg, size)
        except Exception as e:  # a bug here must not leave every waiter hanging
            log.exception("guest channel reader failed")
            err = GuestProtocolError(f"guest channel reader failed: {e!r}")
        self._fail(err)

    def _route(self, msg: dict[str, Any], size: int) -> None:
        raw = msg.get("id")
        req = raw if type(raw) is int else -1  # no request has a negative id
        with self._lock:
            route = self._routes.get(req)
        if route is None:
            self.dropped_frames += 1
            if self.dropped_frames % _DROP_LOG_EVERY == 1:
                log.warning("guest sent a frame for no request the host knows (id %.40r, ev "
                            "%.40r); %d dropped so far", raw, msg.get("ev"), self.dropped_frames)
            return
        try:
            keep = route.deliver(msg, size)
        except Exception:  # a route that breaks loses its request, not the channel
            log.exception("delivering a guest frame for request %s failed", req)
            route.fail(GuestProtocolError(f"the host could not take the guest's answer to "
                                          f"request {req}"))
            keep = False
        if not keep:
            with self._lock:
                if self._routes.get(req) is route:
                    del self._routes[req]

    def _fail(self, err: GuestError) -> None:
        with self._lock:
            if self._error is None:
                self._error = err
            routes = list(self._routes.values())
            self._routes.clear()
        for route in routes:
            with contextlib.suppress(Exception):
                route.fail(self._error)

    # ---- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Close the channel: every request waiting fails with GuestGone."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader out of recv
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout=5)
        self._fail(GuestGone("guest channel closed by the host"))
        with self._send_lock:  # no sender is between its poll and its send on this fd
            self._sock.close()


__all__ = ["DISCARD", "MAX_INBOX_BYTES", "MAX_INBOX_FRAMES", "GuestMux", "Inbox", "Route",
           "fresh"]
