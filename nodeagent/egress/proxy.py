"""The host-side egress proxy: one per node agent, its own asyncio loop in a daemon thread, one
unix socket per attached VM.

A guest reaches it only through a relay that hands each of its connections to that VM's socket:
the socat in the guest's own network namespace (nodeagent/guestnet.py, run as root; QEMU's
guestfwd, which would run socat as QEMU's user, is forbidden by libvirt's seccomp filter). So
each socket is made group `socket_group` with mode 0660 (0666 when no such group exists), and
must sit in a directory the relay's user can traverse. Nothing but the socket's path names the
VM: every connection on it is that VM's, decided against that VM's allowlist and recorded with
its ids.

    proxy = EgressProxy(record, Resolver(hosts_file), host_addresses, node_name="h1")
    proxy.start()
    proxy.attach("vm-3", vm_dir / "egress.sock", parse_rules(["pypi.org:443"]), ids)
    ...
    totals = proxy.detach("vm-3")    # closes its socket and its live connections
    proxy.close()
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import stat
import threading
from collections.abc import Callable, Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from tryfleet.errors import BadRequest
from tryfleet.wire import EgressEvent, Ids

from . import metrics
from .addresses import IPAddress, blocked_reason
from .connection import Connection, Context, VmEgress
from .resolver import Resolver
from .rules import Rule

log = logging.getLogger(__name__)
T = TypeVar("T")
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class EgressTotals:
    """What one VM did through the proxy while attached: bytes relayed each way and the
    decisions made on its connections."""

    bytes_up: int = 0
    bytes_down: int = 0
    allowed: int = 0
    denied: int = 0


class EgressProxy:
    """The egress proxy of one fleet host. record(event) is called for every decision before
    anything is connected or answered (in a thread: it may block on the audit; if it raises
    the connection is refused with 503) and at every allowed connection's end.

    Decisions (EgressEvent kind "decision"): allow "allowlisted"; deny "not-allowlisted"
    (403), "blocked-address:<kind>" (403, kinds in addresses.KINDS), "resolve-failed" (502),
    "bad-request" (400, 408 no head in time, 431 head too large), "too-many-connections"
    (429). A decision that could not be recorded is answered 503 and counted in the metric as
    deny "audit-unavailable". End events (kind "end", of allowed connections) give in reason
    how it ended: "closed", "idle-timeout", "detached", "connect-failed" (502 to the guest),
    "connect-timeout" (504).

    head_timeout_s: for the whole request head. node_name: the `host` label of the metrics.
    socket_group: the group given each VM's socket (mode 0660); with no such group, 0666.
    blocked(address, own): why an address is refused (None: it is not); tests that serve on
    loopback pass their own, production keeps blocked_reason."""

    def __init__(self, record: Callable[[EgressEvent], None], resolver: Resolver,
                 own_addresses: Callable[[], Collection[IPAddress]], *,
                 max_connections_per_vm: int = 32, header_limit_bytes: int = 16384,
                 connect_timeout_s: float = 10, idle_timeout_s: float = 300,
                 head_timeout_s: float = 10, node_name: str = "",
                 socket_group: str | None = "libvirt-qemu",
                 blocked: Callable[[IPAddress, Collection[IPAddress]], str | None]
                 = blocked_reason) -> None:
        self._record_sync = record
        self.node_name = node_name
        self.socket_group = socket_group
        self._audit_pool = ThreadPoolExecutor(2, thread_name_prefix="egress-audit")
        self._ctx = Context(
            record=self._record, resolver=resolver, own_addresses=own_addresses,
            blocked=blocked, decisions=self._count_decision,
            bytes_up=metrics.BYTES.labels(node_name, "up"),
            bytes_down=metrics.BYTES.labels(node_name, "down"),
            max_connections_per_vm=max_connections_per_vm,
            header_limit_bytes=header_limit_bytes, head_timeout_s=head_timeout_s,
            connect_timeout_s=connect_timeout_s, idle_timeout_s=idle_timeout_s)
        self._open = metrics.CONNECTIONS.labels(node_name)
        self._vms: dict[str, VmEgress] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- the caller's side (any thread) ------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_log_loop_error)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="egress-proxy", daemon=True)
        self._thread.start()
        ready.wait()

    def attach(self, vm: str, socket_path: Path, rules: tuple[Rule, ...], ids: Ids) -> None:
        """Listen for the VM's connections on a new unix socket at socket_path (a stale socket
        there is replaced; anything else there is refused)."""
        self._call(self._attach(vm, Path(socket_path), tuple(rules), ids))

    def detach(self, vm: str) -> EgressTotals:
        """Close the VM's socket and every live connection of it (their end events recorded);
        what it did while attached. A VM not attached: all zero."""
        return self._call(self._detach(vm))

    def attached(self) -> list[str]:
        """The VMs attached now."""
        return self._call(self._attached())

    def close(self) -> None:
        """Detach every VM, stop the proxy's thread, and close its resolver."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._detach_all())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(CALL_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()
            self._loop = self._thread = None
            self._audit_pool.shutdown(wait=False)
            self._ctx.resolver.close()

    # ---- in the proxy's loop -----------------------------------------------------------------
    async def _attach(self, vm: str, path: Path, rules: tuple[Rule, ...], ids: Ids) -> None:
        if vm in self._vms:
            raise BadRequest(f"VM {vm!r} is already attached to the egress proxy; detach it "
                             "first")
        _clear_stale_socket(path)
        state = VmEgress(vm, rules, ids, socket_path=path)
        state.server = await asyncio.start_unix_server(
            partial(self._accept, state), path=str(path),
            limit=self._ctx.header_limit_bytes)
        try:
            self._open_to_qemu(path)
        except OSError:
            state.server.close()
            path.unlink(missing_ok=True)
            raise
        self._vms[vm] = state

    async def _accept(self, state: VmEgress, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.tasks.add(task)
        self._open.inc()
        try:
            await Connection(self._ctx, state, reader, writer).run()
        except asyncio.CancelledError:
            pass  # detached: this task is the connection's own, and it ends here
        finally:
            state.tasks.discard(task)
            self._open.dec()

    async def _detach(self, vm: str) -> EgressTotals:
        state = self._vms.pop(vm, None)
        if state is None:
            return EgressTotals()
        if state.server is not None:
            state.server.close()
        if state.socket_path is not None:
            state.socket_path.unlink(missing_ok=True)
        tasks = list(state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CALL_TIMEOUT_S / 2)
        return EgressTotals(state.bytes_up, state.bytes_down, state.allowed, state.denied)

    async def _attached(self) -> list[str]:
        return sorted(self._vms)

    async def _detach_all(self) -> None:
        for vm in list(self._vms):
            await self._detach(vm)

    async def _record(self, event: EgressEvent) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._audit_pool, self._record_sync, event)

    def _count_decision(self, decision: str, reason: str) -> None:
        metrics.DECISIONS.labels(self.node_name, decision, reason).inc()

    def _open_to_qemu(self, path: Path) -> None:
        gid = None
        if self.socket_group:
            try:
                gid = grp.getgrnam(self.socket_group).gr_gid
            except KeyError:
                gid = None
        if gid is not None and os.geteuid() == 0:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        else:  # no such group here (or not root): anyone who can traverse the directory
            os.chmod(path, 0o666)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the egress proxy is not started (call start() first)")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(CALL_TIMEOUT_S)


def _clear_stale_socket(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise BadRequest(f"{path} exists and is not a socket: the egress proxy will not "
                         "replace it")
    path.unlink()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    log.error("egress proxy loop: %s", context.get("message"),
              exc_info=context.get("exception"))


__all__ = ["EgressProxy", "EgressTotals"]
