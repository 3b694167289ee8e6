"""One guest connection to the egress proxy: read the request head, decide, record the decision,
then connect to the checked address and relay, or answer with the refusal and close.

The order is the point: allowlist, then resolve (hosts file first), then check every address,
then record the decision (a recording that fails refuses the connection: fail closed), and only
then connect, to the exact address that was checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tryfleet.errors import BadRequest
from tryfleet.wire import MAX_EGRESS_REQUEST_CHARS, EgressEvent, Ids

from .addresses import IPAddress, describe
from .httphead import (
    ESTABLISHED,
    HeadError,
    ProxyRequest,
    answer,
    parse_head,
    parse_response_head,
    request_line,
)
from .resolver import ResolveFailed, Resolver
from .rules import Rule, allowed, canonical_host

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)
BUFFER_BYTES = 64 * 1024
MAX_RULES_SHOWN = 20
LINGER_S = 2.0  # after a refusal, how long the proxy reads what the guest still sends
LINGER_BYTES = 1024 * 1024  # and how much of it at most


class AuditDown(Exception):
    """Recording a decision failed: the connection is refused."""


@dataclass
class VmEgress:
    """One attached VM: its allowlist, its ids, its live connections and its running totals."""

    vm: str
    rules: tuple[Rule, ...]
    ids: Ids
    server: asyncio.AbstractServer | None = None
    socket_path: Path | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    bytes_up: int = 0
    bytes_down: int = 0
    allowed: int = 0
    denied: int = 0


@dataclass(frozen=True)
class Context:
    """What every connection of a proxy shares."""

    record: Callable[[EgressEvent], Awaitable[None]]  # raises when the audit did not take it
    resolver: Resolver
    own_addresses: Callable[[], Collection[IPAddress]]
    blocked: Callable[[IPAddress, Collection[IPAddress]], str | None]
    decisions: Callable[[str, str], None]  # (decision, reason): the metric
    bytes_up: Counter
    bytes_down: Counter
    max_connections_per_vm: int
    header_limit_bytes: int
    head_timeout_s: float
    connect_timeout_s: float
    idle_timeout_s: float


class Refused(Exception):
    """A decision to refuse: the answer's status, the message, and the event's fields."""

    def __init__(self, status: int, message: str, reason: str, address: str = "") -> None:
        super().__init__(message)
        self.status, self.reason, self.address = status, reason, address


class Connection:
    def __init__(self, ctx: Context, vm: VmEgress, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.ctx, self.vm, self.reader, self.writer = ctx, vm, reader, writer
        self.host, self.port, self.line = "", 0, ""
        self.up = self.down = 0
        self.last = time.monotonic()

    async def run(self) -> None:
        """Serve the connection to its end; never raises (but for cancellation)."""
        try:
            await self._serve()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a guest must never take the proxy down
            log.exception("egress connection of %s failed", self.vm.vm)
        finally:
            self.writer.close()

    async def _serve(self) -> None:
        if len(self.vm.tasks) > self.ctx.max_connections_per_vm:
            n = self.ctx.max_connections_per_vm
            await self._refuse(Refused(
                429, f"this sandbox has {n} proxy connections open, the most it may: close "
                     "one and try again", "too-many-connections"))
            return
        head = await self._read_head()
        if head is None:
            return
        try:
            req = parse_head(head)
        except HeadError as err:
            await self._refuse(Refused(err.status, f"bad request: {err}", "bad-request"))
            return
        self.host, self.port, self.line = _printable(req.host, 255), req.port, req.line
        try:
            address = await self._decide(req)
        except Refused as refusal:
            await self._refuse(refusal)
            return
        await self._connect(req, address)

    async def _read_head(self) -> bytes | None:
        try:
            return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"),
                                          self.ctx.head_timeout_s)
        except asyncio.LimitOverrunError:
            self.line = request_line(await self.reader.read(MAX_EGRESS_REQUEST_CHARS))
            await self._refuse(Refused(
                431, f"the request head is over {self.ctx.header_limit_bytes} bytes",
                "bad-request"))
        except asyncio.IncompleteReadError as err:
            if err.partial:  # it closed mid-head: recorded, nobody to answer
                self.line = request_line(err.partial)
                with contextlib.suppress(AuditDown):
                    await self._record("decision", "deny", "bad-request")
        except TimeoutError:
            await self._refuse(Refused(
                408, f"no complete request head within {self.ctx.head_timeout_s:g} s",
                "bad-request"))
        return None

    async def _decide(self, req: ProxyRequest) -> IPAddress:
        """The address to connect to; raises Refused."""
        rules = self.vm.rules
        with contextlib.suppress(BadRequest):  # else it stays as written: no rule allows it
            self.host = canonical_host(req.host)
        if not allowed(rules, req.host, req.port):
            shown = ", ".join(str(r) for r in rules[:MAX_RULES_SHOWN]) or "nothing"
            more = f" and {len(rules) - MAX_RULES_SHOWN} more" if len(rules) > MAX_RULES_SHOWN \
                else ""
            raise Refused(403, f"{self.host}:{req.port} is not on this sandbox's allowlist "
                               f"(allowed: {shown}{more})", "not-allowlisted")
        try:
            addresses = await self.ctx.resolver.resolve(self.host)
        except ResolveFailed as err:
            raise Refused(502, str(err), "resolve-failed") from None
        own = self.ctx.own_addresses()
        for address in addresses:
            kind = self.ctx.blocked(address, own)
            if kind is not None:
                raise Refused(403, f"{self.host} resolves to {address}, {describe(kind)}: "
                                   "refused", f"blocked-address:{kind}", str(address))
        return addresses[0]

    async def _connect(self, req: ProxyRequest, address: IPAddress) -> None:
        try:
            await self._record("decision", "allow", "allowlisted", str(address))
        except AuditDown:
            await self._answer(503, "egress audit unavailable: the connection was not made")
            return
        started = time.monotonic()
        how = "closed"
        try:
            how = await self._connected(req, address)
        except asyncio.CancelledError:
            how = "detached"
            raise
        finally:
            await self._record_end(how, str(address), time.monotonic() - started)

    async def _connected(self, req: ProxyRequest, address: IPAddress) -> str:
        """Connect to the address and relay; how it ended."""
        try:
            origin_r, origin_w = await asyncio.wait_for(
                asyncio.open_connection(str(address), req.port, limit=BUFFER_BYTES),
                self.ctx.connect_timeout_s)
        except TimeoutError:
            await self._answer(504, f"{self.host}:{req.port} ({address}) did not answer "
                                    f"within {self.ctx.connect_timeout_s:g} s")
            return "connect-timeout"
        except OSError as err:
            await self._answer(502, f"could not connect to {self.host}:{req.port} "
                                    f"({address}): {err.strerror or err}")
            return "connect-failed"
        try:
            return await self._relay(req, origin_r, origin_w)
        finally:
            origin_w.close()

    async def _relay(self, req: ProxyRequest, origin_r: asyncio.StreamReader,
                     origin_w: asyncio.StreamWriter) -> str:
        """Bytes both ways until the destination ends, either side fails, or neither sent
        anything for the idle timeout; how it ended."""
        # what the guest sent after the head is still in its reader: the pump takes it
        if req.tunnel:
            self.writer.write(ESTABLISHED)
            up = asyncio.create_task(self._pump(self.reader, origin_w, True, None))
            down = asyncio.create_task(self._pump(origin_r, self.writer, False, None))
        else:  # the request's own body only, and the answer to it
            origin_w.write(req.head)
            self._count_up(len(req.head))
            up = asyncio.create_task(self._pump(self.reader, origin_w, True, req.body_bytes))
            down = asyncio.create_task(self._response(origin_r, req.method))
        pending = {up, down}
        how = "closed"
        try:
            while pending:
                left = self.last + self.ctx.idle_timeout_s - time.monotonic()
                if left <= 0:
                    how = "idle-timeout"
                    break
                done, pending = await asyncio.wait(pending, timeout=left,
                                                   return_when=asyncio.FIRST_COMPLETED)
                if down in done or any(t.exception() for t in done):
                    break
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return how

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool,
                    limit: int | None) -> None:
        """Relay src to dst: limit bytes, or (None) until src ends, then pass the end on
        (upwards: the guest is done sending; the answer may still come)."""
        left = limit
        while left is None or left > 0:
            data = await src.read(BUFFER_BYTES if left is None else min(left, BUFFER_BYTES))
            if not data:
                break
            if left is not None:
                left -= len(data)
            dst.write(data)
            self.last = time.monotonic()
            if up:
                self._count_up(len(data))
            else:
                self._count_down(len(data))
            await dst.drain()
        if up and limit is None and dst.can_write_eof():
            dst.write_eof()

    async def _response(self, origin: asyncio.StreamReader, method: str) -> None:
        """Relay the origin's answer: its heads rewritten (Connection: close), then its body
        (as long as its head says, or until the origin closes)."""
        while True:
            try:
                raw = await origin.readuntil(b"\r\n\r\n")
                head = parse_response_head(raw, method)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, HeadError) as err:
                what = err if isinstance(err, HeadError) else "its answer has no valid head"
                await self._answer(502, f"{self.host}:{self.port}: {what}", linger=False)
                return
            self.writer.write(head.head)
            self._count_down(len(head.head))
            self.last = time.monotonic()
            if not head.interim:
                break
        await self._pump(origin, self.writer, False, head.body_bytes)
        await self.writer.drain()

    def _count_up(self, n: int) -> None:
        self.up += n
        self.vm.bytes_up += n
        self.ctx.bytes_up.inc(n)

    def _count_down(self, n: int) -> None:
        self.down += n
        self.vm.bytes_down += n
        self.ctx.bytes_down.inc(n)

    async def _refuse(self, refusal: Refused) -> None:
        try:
            await self._record("decision", "deny", refusal.reason, refusal.address)
        except AuditDown:
            await self._answer(503, "egress audit unavailable: the connection was not made")
            return
        await self._answer(refusal.status, str(refusal))

    async def _answer(self, status: int, text: str, linger: bool = True) -> None:
        """The proxy's own answer. linger: then end the sending side and read what the guest
        still sends, for a while, before the connection closes: closing with its request
        unread would reset the connection, and the guest might never see the answer."""
        self.writer.write(answer(status, f"tryfleet egress: {text}"))
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(self._linger() if linger else self.writer.drain(), LINGER_S)

    async def _linger(self) -> None:
        await self.writer.drain()
        if self.writer.can_write_eof():
            self.writer.write_eof()
        left = LINGER_BYTES
        while left > 0 and (data := await self.reader.read(min(left, BUFFER_BYTES))):
            left -= len(data)

    async def _record(self, kind: str, decision: str, reason: str, address: str = "") -> None:
        """Record a decision (counted in the totals and the metric); raises AuditDown."""
        try:
            await self.ctx.record(self._event(kind, decision, reason, address))
        except Exception as err:
            log.error("egress decision of %s not recorded, refused: %s", self.vm.vm, err)
            decision, reason = "deny", "audit-unavailable"
            raise AuditDown(str(err)) from None
        finally:
            self.vm.allowed += decision == "allow"
            self.vm.denied += decision == "deny"
            self.ctx.decisions(decision, reason)

    async def _record_end(self, how: str, address: str, duration_s: float) -> None:
        event = self._event("end", "allow", how, address, duration_s)
        try:
            await asyncio.shield(self.ctx.record(event))
        except Exception as err:  # the connection is over either way
            log.error("egress end of %s not recorded: %s (%s)", self.vm.vm, err, event)

    def _event(self, kind: str, decision: str, reason: str, address: str,
               duration_s: float = 0.0) -> EgressEvent:
        return EgressEvent(self.vm.vm, self.vm.ids, kind, self.host, self.port, address,
                           decision, reason, self.up, self.down, duration_s, self.line)


def _printable(text: str, limit: int) -> str:
    return "".join(c if " " < c <= "~" else "?" for c in text[:limit])


__all__ = ["AuditDown", "Connection", "Context", "VmEgress"]
