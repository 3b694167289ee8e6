"""What the audit trail costs one request: exec `true` over HTTP through the gateway as `tryfleet
up` runs it (every call recorded before it acts) and through a second gateway on the same fleet
that records nothing, alternately on one sandbox (which goes first alternates too), so that a
load drifting over the run weighs on both alike.

Target: audited within TARGET_AUDIT_COST_MS of unaudited, p50.
"""

from __future__ import annotations

import time
from typing import Any

from .apifleet import BenchFleet, GatewayVariant
from .common import percentile

UNAUDITED = GatewayVariant("audit-off", (("audit", False),))
TARGET_AUDIT_COST_MS = 2.0


def audit_cost(bench: BenchFleet, audited: str, sid: str, pairs: int) -> dict[str, Any]:
    """exec `true` on sandbox `sid` through the `audited` gateway and the unaudited one."""
    import httpx

    urls = {"on": bench.urls[audited], "off": bench.urls[UNAUDITED.name]}
    clients = {k: httpx.Client(base_url=u, timeout=120) for k, u in urls.items()}

    def once(which: str) -> float:
        t0 = time.perf_counter()
        r = clients[which].post(f"/v1/sandboxes/{sid}/exec", json={"argv": ["true"]},
                                headers=bench.sandbox_key)
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200 or r.json()["exit_code"] != 0:
            raise RuntimeError(f"HTTP `true` (audit {which}): {r.status_code} {r.text[:500]}")
        return ms

    try:
        for _ in range(5):  # connections, caches
            once("on"), once("off")
        times: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(pairs):
            for which in ("on", "off") if i % 2 else ("off", "on"):
                times[which].append(once(which))
    finally:
        for c in clients.values():
            c.close()
    on, off = percentile(times["on"], 50), percentile(times["off"], 50)
    paired = [a - b for a, b in zip(times["on"], times["off"], strict=True)]
    cost = round(on - off, 2)
    return {"exec_true_p50_ms_audit_on": round(on, 2), "exec_true_p50_ms_audit_off": round(off, 2),
            "audit_cost_p50_ms": cost, "audit_cost_paired_p50_ms": round(percentile(paired, 50), 2),
            "pairs": pairs, "target_ms": TARGET_AUDIT_COST_MS,
            "met": cost <= TARGET_AUDIT_COST_MS}


__all__ = ["TARGET_AUDIT_COST_MS", "UNAUDITED", "audit_cost"]
