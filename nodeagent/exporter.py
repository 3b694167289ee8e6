"""A node agent's Prometheus metrics, in its process's default registry, every sample with
the `host` it was measured on. The scheduler asks each node agent for them (`metrics`, the
whole registry: other parts of the node agent register theirs there too) and the gateway's
/metrics serves them with the rest of the fleet's.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, Histogram, disable_created_metrics, generate_latest

from tryfleet.wire import Exposition, pack

# no `_created` series beside every counter and histogram
disable_created_metrics()  # type: ignore[no-untyped-call]

# From a pool hit (a millisecond) to a cold boot under TCG (tens of seconds).
START_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0,
                   8.0, 15.0, 30.0, 60.0, 120.0)
# From `true` in a warm guest (tens of milliseconds) to a test suite's run.
EXEC_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                  300.0, 900.0, 3600.0)

SANDBOX_START = Histogram(
    "tryfleet_sandbox_start_seconds", "Time from asking for a VM to its guest agent answering, "
    "by image and origin: pool (a warm VM handed out), restore (a saved guest restored), boot",
    ["host", "image", "origin"], buckets=START_BUCKETS_S)
EXEC_DURATION = Histogram(
    "tryfleet_exec_duration_seconds", "Time a command run in a VM took, from start to exit, "
    "as the host saw it (iterations' commands and sandboxes' exec alike)", ["host"],
    buckets=EXEC_BUCKETS_S)


def started(host: str, image: str, origin: str, seconds: float) -> None:
    SANDBOX_START.labels(host, image, origin).observe(seconds)


def ran(host: str, seconds: float) -> None:
    EXEC_DURATION.labels(host).observe(seconds)


def exposition() -> bytes:
    """What a node agent answers to `metrics`: this process's default registry, packed."""
    return pack(Exposition(os.getpid(), generate_latest(REGISTRY)))


__all__ = ["EXEC_DURATION", "SANDBOX_START", "exposition", "ran", "started"]
