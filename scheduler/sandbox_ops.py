"""Interactive sandboxes from the scheduler's side: capacity leased from the core (within the
tenant's quota), recorded in the ledger (sandboxes.py), opened, extended and closed on the
host's node agent. Every call is tenant-scoped: another tenant's sandbox is NotFound, exactly
like an id nobody used; None as the tenant (an admin) sees all.

    open:   LeaseOpened -> record (open) -> node sandbox_open -> vm recorded
            (the node failed: lease released, record closed with the error)
    extend: node sandbox_extend -> LeaseExtended -> record
    close:  node sandbox_close -> record closed -> LeaseClosed        (idempotent)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tryfleet.errors import (
    BadRequest,
    CannotPlace,
    InfrastructureError,
    NoRoom,
    NotFound,
    QuotaExceeded,
    TryfleetError,
)
from tryfleet.wire import Ids, SandboxOpen, pack

from . import audit_records
from . import core as c
from .engine import Engine
from .placement import Demand
from .sandboxes import CLOSED, SandboxRecord, StateFilter
from .switches import Level

log = logging.getLogger("tryfleet.scheduler")
OPEN_TIMEOUT_S = 900.0  # a host may have to build the image first
NODE_CALL_TIMEOUT_S = 30.0
MAX_WAIT_S = 600.0
MAX_METADATA = 64  # entries, each key <= 64 and value <= 1024 characters
QUOTA_FIELDS = ("max_sandboxes", "max_vcpus_in_use", "max_mem_mib_in_use")


def new_sandbox_id() -> str:
    return "sbx-" + secrets.token_hex(8)


def _cause(err: BaseException) -> BaseException:
    """The node agent's own error out of Ray's wrapper."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def _int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise BadRequest(f"{name} must be a whole number >= {least}, got {value!r}")
    return value


def _seconds(name: str, value: Any, most: float, least: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not least < value <= most:
        raise BadRequest(f"{name} must be a number of seconds in ({least:g}, {most:g}], "
                         f"got {value!r}")
    return float(value)


def quota_of(limits: Mapping[str, int] | None) -> c.Quota:
    """The core's Quota from the gateway's policy numbers (unknown names refused)."""
    limits = dict(limits or {})
    unknown = sorted(set(limits) - set(QUOTA_FIELDS))
    if unknown:
        raise BadRequest(f"unknown quota(s) {', '.join(unknown)}; known: "
                         f"{', '.join(QUOTA_FIELDS)}")
    return c.Quota(**{k: _int(k, v, 0) for k, v in limits.items()})


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    out = dict(metadata or {})
    if len(out) > MAX_METADATA or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 64 and len(v) <= 1024
            for k, v in out.items()):
        raise BadRequest(f"metadata must be at most {MAX_METADATA} string pairs (keys of "
                         "1-64 characters, values of at most 1024)")
    return out


def _rules(egress: Sequence[str]) -> tuple[str, ...]:
    if isinstance(egress, str) or not all(isinstance(r, str) and r for r in egress):
        raise BadRequest(f"egress must be a list of \"HOST:PORT\" rules, got {egress!r}")
    return tuple(egress)


class SandboxOps:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.book = engine.sandboxes

    # ---- open ------------------------------------------------------------------------------
    async def open(self, tenant: str, image: str, cpus: int, mem_mib: int,
                   disk_mib: int | None, timeout_s: float, *,
                   metadata: Mapping[str, str] | None = None, key_id: str = "",
                   request_id: str = "", limits: Mapping[str, int] | None = None,
                   wait_s: float = 0.0, egress: Sequence[str] = ()) -> SandboxRecord:
        """A sandbox open on some host, recorded; QuotaExceeded, CannotPlace, NoRoom after
        wait_s, or InfrastructureError when its host could not open it. egress: the
        allowlist rules of the tenant's policy (none: its VM has no network device)."""
        if not isinstance(image, str) or not image:
            raise BadRequest(f"image must be a name, got {image!r}")
        demand = Demand(_int("cpus", cpus, 1), _int("mem_mib", mem_mib, 128),
                        c.DEFAULT_DISK_MIB if disk_mib is None else _int("disk_mib", disk_mib, 1),
                        image)
        timeout_s = _seconds("timeout_s", timeout_s, 366 * 86400)
        wait_s = 0.0 if wait_s == 0 else _seconds("wait_s", wait_s, MAX_WAIT_S)
        meta, quota, rules = _metadata(metadata), quota_of(limits), _rules(egress)
        sid = new_sandbox_id()
        host = await self._grant(sid, tenant, demand, timeout_s, quota, wait_s, key_id)
        rec = SandboxRecord(sid, tenant, image, cpus, mem_mib, disk_mib, host, "open",
                            time.time(), time.time() + timeout_s, key_id, request_id,
                            metadata=meta)
        try:
            if self.engine.audit is not None:  # sandbox.open, before anything opens it
                await self.engine.audit.arecord_many([audit_records.sandbox_opened(rec)])
            self.book.record(rec)
        except BaseException:
            self.engine.release(sid)
            raise
        self.engine.mark_opening(sid)
        try:
            vm = await self._open_on_host(rec, timeout_s, rules)
        finally:
            self.engine.opening.discard(sid)
        self.book.set_vm(sid, vm)
        return self.book.get(sid)

    async def _grant(self, sid: str, tenant: str, demand: Demand, timeout_s: float,
                     quota: c.Quota, wait_s: float, key_id: str) -> str:
        """The host that took the lease, waiting up to wait_s for room; Frozen under a kill
        switch of the tenant, the key or everything."""
        deadline = time.monotonic() + wait_s
        while True:
            got = self.engine.lease(sid, demand, timeout_s, tenant, quota, key_id)
            if isinstance(got, c.LeaseGranted):
                return got.host
            if isinstance(got, c.LeaseFrozen):
                raise got.switch.refusal(f"opening a sandbox for tenant {tenant!r}")
            if isinstance(got, c.LeaseOverQuota):
                raise QuotaExceeded(got.why, got.limit, got.value)
            what = (f"a sandbox of {demand.image} ({demand.cpus} cpus, {demand.mem_mib} MiB, "
                    f"{demand.disk_mib} MiB of disk)")
            if got.never:
                raise CannotPlace(f"{what} can never be placed on this fleet: {got.why}",
                                  got.why)
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoRoom(f"no room for {what} within {wait_s:g}s: {got.why}; try again "
                             "later or wait longer (wait_s)")
            await self.engine.room_changed(left)

    async def _open_on_host(self, rec: SandboxRecord, timeout_s: float,
                            egress: tuple[str, ...] = ()) -> str:
        ep = self.engine.hosts.endpoint(rec.host)
        req = SandboxOpen(rec.id, rec.image, rec.cpus, rec.mem_mib, rec.disk_mib, timeout_s,
                          Ids(tenant=rec.tenant, host=rec.host, request_id=rec.request_id,
                              key=rec.key_id),
                          egress=egress)
        try:
            if ep is None:
                raise InfrastructureError(f"host {rec.host} is gone")
            vm = await asyncio.wait_for(ep.call("sandbox_open", pack(req)), OPEN_TIMEOUT_S)
            if not isinstance(vm, str):
                raise InfrastructureError(f"host {rec.host} answered {vm!r} for a VM name")
            return vm
        except BaseException as err:
            cause = _cause(err)
            why = f"{rec.host} could not open it: {type(cause).__name__}: {cause}"
            log.warning("sandbox %s: %s", rec.id, why, extra=record_ids(rec))
            self._closed(rec, why)
            self.book.close_record(rec.id, why)
            self.engine.release(rec.id)
            if ep is not None and not isinstance(err, asyncio.CancelledError):
                await self._node(rec.host, "sandbox_close", rec.id)  # a late VM goes too
            if isinstance(cause, BadRequest):
                raise cause from None
            if isinstance(err, asyncio.CancelledError):
                raise
            raise InfrastructureError(f"sandbox {rec.id}: {why}") from None

    def _closed(self, rec: SandboxRecord, why: str) -> None:
        """sandbox.close of one that never opened (its VM may not exist: not refused)."""
        if self.engine.audit is None:
            return
        try:
            self.engine.audit.record_many([audit_records.sandbox_closed(rec, rec.id, rec.host,
                                                                        why)])
        except TryfleetError as err:
            log.error("sandbox %s closed unrecorded: %s", rec.id, err, extra=record_ids(rec))

    async def _node(self, host: str, method: str, *args: Any) -> Any:
        """A node call whose failure is logged, not raised (None then)."""
        ep = self.engine.hosts.endpoint(host)
        if ep is None:
            return None
        try:
            return await asyncio.wait_for(ep.call(method, *args), NODE_CALL_TIMEOUT_S)
        except Exception as err:
            log.warning("%s %s on %s failed: %s", method, args[:1], host, _cause(err),
                        extra={"host": host})
            return None

    # ---- reads -----------------------------------------------------------------------------
    def get(self, sid: str, tenant: str | None) -> SandboxRecord:
        return self.book.get(sid, tenant)

    def list(self, tenant: str | None, state: StateFilter, limit: int,
             cursor: str | None) -> tuple[list[SandboxRecord], str | None]:
        return self.book.page(tenant, state, limit, cursor)

    # ---- extend and close ------------------------------------------------------------------
    async def extend(self, sid: str, tenant: str | None, timeout_s: float) -> SandboxRecord:
        """expires_at = now + timeout_s, here and on its host (whose own timer follows)."""
        timeout_s = _seconds("timeout_s", timeout_s, 366 * 86400)
        rec = self._open_one(sid, tenant)
        frozen = self.engine.core.state.switches.get(Level.SANDBOX, sid)
        if frozen is not None:  # a frozen sandbox ends at its timeout (its commands go on)
            raise frozen.refusal(f"extending sandbox {sid}")
        ep = self.engine.hosts.endpoint(rec.host)
        try:
            if ep is None:
                raise NotFound(f"host {rec.host} is gone")
            await asyncio.wait_for(ep.call("sandbox_extend", sid, timeout_s),
                                   NODE_CALL_TIMEOUT_S)
        except Exception as err:
            cause = _cause(err)
            if not isinstance(cause, NotFound):
                raise InfrastructureError(f"sandbox {sid}: {rec.host} could not extend it: "
                                          f"{cause}") from None
            await self.close(sid, tenant, f"gone from its host: {cause}")
            raise NotFound(f"sandbox {sid!r} is gone: {cause}") from None
        expires_at = time.time() + timeout_s
        self.engine.extend(sid, expires_at)
        self.book.extend(sid, expires_at)
        return self.book.get(sid)

    def _open_one(self, sid: str, tenant: str | None) -> SandboxRecord:
        rec = self.book.get(sid, tenant)
        if rec.state == CLOSED:
            raise NotFound(f"sandbox {sid!r} is closed: {rec.close_reason}")
        return rec

    async def close(self, sid: str, tenant: str | None,
                    reason: str = "closed by request") -> SandboxRecord:
        """Its VM destroyed, its record closed with the reason, its capacity freed; closing
        a closed one changes nothing."""
        rec = self.book.get(sid, tenant)
        if rec.state == CLOSED:
            return rec
        await self._node(rec.host, "sandbox_close", sid)
        self.book.close_record(sid, reason)
        self.engine.release(sid)
        return self.book.get(sid)

    # ---- leases of the SDK over Ray (it opens the VM on the node itself) -------------------
    def lease(self, lease_id: str, demand: Demand, timeout_s: float) -> dict[str, Any]:
        got = self.engine.lease(lease_id, demand, timeout_s, "default")
        if isinstance(got, c.LeaseGranted):
            with contextlib.suppress(TryfleetError):  # asked again for a lease it holds
                self.book.record(SandboxRecord(
                    lease_id, "default", demand.image, demand.cpus, demand.mem_mib,
                    demand.disk_mib, got.host, "open", time.time(), time.time() + timeout_s))
            return {"verdict": "placed", "host": got.host, "why": ""}
        if isinstance(got, c.LeaseFrozen):
            raise got.switch.refusal("opening a sandbox")
        assert isinstance(got, c.LeaseRefused)
        return {"verdict": "never" if got.never else "wait", "host": None, "why": got.why}

    def release(self, lease_id: str) -> None:
        self.book.close_record(lease_id, "closed by request")
        self.engine.release(lease_id)


def record_ids(rec: SandboxRecord) -> dict[str, Any]:
    """A sandbox's ids for its log lines."""
    return {"sandbox": rec.id, "tenant": rec.tenant, "host": rec.host,
            "request_id": rec.request_id or None, "key": rec.key_id or None}


__all__ = ["QUOTA_FIELDS", "SandboxOps", "new_sandbox_id", "quota_of"]
