"""The egress proxy's metrics, in the process's default Prometheus registry. `host` is the fleet
host the proxy runs on (never a destination: no unbounded label values)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DECISIONS = Counter("tryfleet_egress_decisions", "Egress proxy decisions on guest connections",
                    ["host", "decision", "reason"])
BYTES = Counter("tryfleet_egress_bytes", "Bytes relayed by the egress proxy (up: guest to "
                "destination, down: destination to guest)", ["host", "direction"])
CONNECTIONS = Gauge("tryfleet_egress_connections", "Guest connections open on the egress proxy",
                    ["host"])

__all__ = ["BYTES", "CONNECTIONS", "DECISIONS"]
