"""What the scenarios that run the real scheduler share: a Ray of their own, a scheduler with its
ledger in the run's temp dir, and waiting on both."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import scratch_dir

POLL_S = 0.05


@contextlib.contextmanager
def local_ray(prefix: str) -> Iterator[Path]:
    """A Ray started for this run on this machine's cpus (never the fleet's), and a temp dir;
    both gone afterwards."""
    from tryfleet import cluster  # sets Ray's auth mode before Ray is imported, as tryfleet does

    cluster.secure_ray()
    import ray

    from tryfleet.wire import NAMESPACE

    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_dir()))
    ray.init(address="local", num_cpus=os.cpu_count() or 1, namespace=NAMESPACE,
             include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        yield tmp
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def start_scheduler(ledger: Path, hosts: int, restartable: bool = False,
                    **settings: Any) -> Any:
    """The real scheduler as a Ray actor with its ledger at `ledger`, once it sees `hosts`
    hosts with capacity. Restartable: as `tryfleet up` starts it (tryfleet/cluster.py), named,
    pinned to this node where its ledger is, and restarted by Ray whenever its process dies."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from tryfleet.scheduler.service import SCHEDULER_NAME, Scheduler
    from tryfleet.wire import NAMESPACE

    options: dict[str, Any] = {"namespace": NAMESPACE, "num_cpus": 0, "max_concurrency": 1000}
    if restartable:
        here = ray.get_runtime_context().get_node_id()
        options.update(name=SCHEDULER_NAME, max_restarts=-1,
                       scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here,
                                                                          soft=False))
    sched = ray.remote(Scheduler).options(**options).remote(str(ledger), **settings)
    deadline = time.monotonic() + 60
    while sum(1 for h in ray.get(sched.status.remote())["hosts"] if h["cpus"]) < hosts:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scheduler did not see {hosts} host(s) within 60 s")
        time.sleep(0.2)
    return sched


def wait_terminal(sched: Any, n: int, deadline: float, suite: str | None = None,
                  poll_s: float = POLL_S) -> bool:
    """Until n iterations (of suite, or of all) have ended; False when the deadline passes."""
    import ray

    from tryfleet.scheduler.records import TERMINAL

    while True:
        counts = ray.get(sched.counts.remote(suite))
        if sum(counts.get(s, 0) for s in TERMINAL) >= n:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
