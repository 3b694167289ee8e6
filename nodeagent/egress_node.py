"""The node agent's side of guest egress: one EgressProxy per node agent (started with the first
guest granted egress), each such VM attached to it on `<data>/egress/<vm>.sock` for as long as
the VM lives, and every proxy event written to the fleet's audit trail before the proxy acts.

The audit trail is the data directory's (`<data>/audit.db`): on a one-host fleet the node agent
shares it with the scheduler and the gateway (SQLite, several processes append). A record that
cannot be written raises, and the proxy then refuses the connection: fail closed.

Names the guest asks for are resolved by the proxy itself: first `<data>/egress-hosts`
(hosts(5) format, read again when it changes: the operator's own names), then the system
resolver.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tryfleet import logs
from tryfleet.private import private_dir
from tryfleet.wire import EgressEvent, Ids

from .egress import EgressProxy, EgressTotals, Resolver, host_addresses, parse_rules
from .hypervisor import EGRESS_SOCKETS

log = logging.getLogger("tryfleet.nodeagent")
HOSTS_FILE = "egress-hosts"
SOCKETS_DIR = EGRESS_SOCKETS
ACTIONS = {"decision": "egress.decision", "end": "egress.end"}
ACTOR = "egress-proxy"


@dataclass(frozen=True, slots=True)
class EgressGrant:
    """What a VM granted egress may reach (canonical "HOST:PORT" rules, from the tenant's
    policy), and whose it is: the ids of its iteration attempt, or its sandbox."""

    rules: tuple[str, ...]
    ids: Ids = field(default_factory=Ids)
    sandbox: str = ""


class AuditSink:
    """The proxy's `record`: one audit record per EgressEvent (egress.decision before the
    proxy connects or answers, egress.end when an allowed connection ends), with the VM's
    tenant, iteration and attempt or sandbox, request and trace ids. Raises when the record
    is not on disk: the proxy refuses."""

    def __init__(self, data_dir: Path, host: str,
                 open_audit: Callable[[Path], Any] | None = None) -> None:
        self.data_dir, self.host = data_dir, host
        self._open_audit = open_audit
        self._audit: Any = None
        self._lock = threading.Lock()
        self._sandbox: dict[str, str] = {}  # vm -> sandbox id

    def own(self, vm: str, sandbox: str) -> None:
        if sandbox:
            self._sandbox[vm] = sandbox

    def forget(self, vm: str) -> None:
        self._sandbox.pop(vm, None)

    def audit(self) -> Any:
        with self._lock:
            if self._audit is None:
                if self._open_audit is not None:
                    self._audit = self._open_audit(self.data_dir)
                else:
                    from tryfleet.audit import Audit

                    self._audit = Audit(self.data_dir)
            return self._audit

    def __call__(self, ev: EgressEvent) -> None:
        ids = ev.ids
        details: dict[str, Any] = {
            "vm": ev.vm, "attempt": ids.attempt, "destination": f"{ev.host}:{ev.port}",
            "address": ev.address, "decision": ev.decision, "reason": ev.reason,
            "request": ev.request}
        if ev.kind == "end":
            details |= {"bytes_up": ev.bytes_up, "bytes_down": ev.bytes_down,
                        "duration_s": round(ev.duration_s, 6)}
        self.audit().record(
            ACTIONS.get(ev.kind, "egress.decision"), tenant=ids.tenant, actor=ACTOR,
            request_id=ids.request_id, trace_id=ids.trace_id,
            sandbox=self._sandbox.get(ev.vm, ""), iteration=ids.iteration, suite=ids.suite,
            host=ids.host or self.host, outcome=ev.decision, details=details)

    def close(self) -> None:
        with self._lock:
            if self._audit is not None:
                self._audit.close()
                self._audit = None


class NodeEgress:
    """The node agent's egress proxy and the VMs attached to it."""

    def __init__(self, data_dir: Path, host: str) -> None:
        self.data_dir, self.host = data_dir, host
        self.sockets = data_dir / SOCKETS_DIR
        self.sink = AuditSink(data_dir, host)
        self._proxy: EgressProxy | None = None
        self._lock = threading.Lock()

    def _started(self) -> EgressProxy:
        with self._lock:
            if self._proxy is None:
                # Root's only: the relay into each guest's namespace runs as root (guestnet.py)
                private_dir(self.sockets)
                proxy = EgressProxy(self.sink, Resolver(self.data_dir / HOSTS_FILE),
                                    host_addresses, node_name=self.host, socket_group="root")
                proxy.start()
                self._proxy = proxy
            return self._proxy

    def socket_of(self, vm: str) -> Path:
        return self.sockets / f"{vm}.sock"

    def attach(self, vm: str, grant: EgressGrant) -> Path:
        """The VM's socket, listening for its connections (BadRequest for a bad rule)."""
        rules = parse_rules(grant.rules)
        proxy = self._started()
        self.sink.own(vm, grant.sandbox)
        path = self.socket_of(vm)
        proxy.attach(vm, path, rules, grant.ids)
        log.info("%s attached to the egress proxy: %s", vm, ", ".join(grant.rules),
                 extra=logs.ids_of(grant.ids))
        return path

    def detach(self, vm: str) -> EgressTotals | None:
        """Its socket closed, its live connections ended (their ends recorded); what it did."""
        proxy = self._proxy
        if proxy is None:
            return None
        try:
            totals = proxy.detach(vm)
        finally:
            self.sink.forget(vm)
        if totals.allowed or totals.denied:
            log.info("%s detached from the egress proxy: %d allowed, %d denied, %d bytes up, "
                     "%d down", vm, totals.allowed, totals.denied, totals.bytes_up,
                     totals.bytes_down)
        return totals

    def close(self) -> None:
        with self._lock:
            proxy, self._proxy = self._proxy, None
        try:
            if proxy is not None:
                proxy.close()
        finally:
            self.sink.close()


__all__ = ["HOSTS_FILE", "SOCKETS_DIR", "AuditSink", "EgressGrant", "NodeEgress"]
