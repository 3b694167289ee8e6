"""How the SDK reaches the fleet today: Ray actor calls to the scheduler and, for interactive
sandboxes, to the node agent of the sandbox's host. The SDK sees only `Transport` (fleet.py);
this is the one module of the client side that imports Ray, so an HTTP transport can take its
place without the SDK changing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import ray

from tryfleet.errors import FleetUnavailable, TryfleetError
from tryfleet.wire import NAMESPACE, NODE_ACTOR_PREFIX

from . import cluster

RECONNECT_PAUSE_S = 1.0


def scheduler_error(err: ray.exceptions.RayTaskError) -> BaseException:
    """The scheduler's own error when it refused the request (any TryfleetError: a bad
    request, an unknown id, ...), else Ray's (a bug in the scheduler)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, TryfleetError) else err


class RayTransport:
    def __init__(self) -> None:
        self._sched = cluster.scheduler()
        self._nodes: dict[str, Any] = {}

    def call(self, method: str, *args: Any, retry_s: float = 0.0) -> Any:
        """Call the scheduler; while it restarts, find it again for up to retry_s."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return ray.get(getattr(self._sched, method).remote(*args))
            except ray.exceptions.RayTaskError as err:
                raise scheduler_error(err) from None
            except (ray.exceptions.RayActorError, FleetUnavailable) as err:
                if time.monotonic() >= deadline:
                    if isinstance(err, FleetUnavailable):
                        raise
                    raise FleetUnavailable(f"the scheduler did not answer ({err}); is the "
                                           "fleet up (`tryfleet status`)?") from err
                time.sleep(RECONNECT_PAUSE_S)
                with contextlib.suppress(FleetUnavailable):
                    self._sched = cluster.scheduler()

    def _node(self, host: str) -> Any:
        if host not in self._nodes:
            try:
                self._nodes[host] = ray.get_actor(NODE_ACTOR_PREFIX + host, namespace=NAMESPACE)
            except ValueError:
                raise FleetUnavailable(f"host {host} has no node agent running") from None
        return self._nodes[host]

    def node(self, host: str, method: str, *args: Any) -> Any:
        """Call the node agent of host (the one holding a sandbox)."""
        try:
            return ray.get(getattr(self._node(host), method).remote(host, *args))
        except ray.exceptions.RayTaskError as err:
            raise scheduler_error(err) from None
        except ray.exceptions.RayActorError as err:
            raise FleetUnavailable(f"host {host} did not answer: {err}") from err

    def node_stream(self, host: str, method: str, *args: Any) -> Iterator[Any]:
        """A streaming call to the node agent of host: each item as it comes."""
        fn = getattr(self._node(host), method)
        for ref in fn.options(num_returns="streaming").remote(host, *args):
            yield ray.get(ref)

    def close(self, stop_fleet: bool) -> None:
        """Let go of Ray; stop_fleet (an embedded fleet) also stops its actors and their VMs."""
        if stop_fleet and ray.is_initialized():
            cluster.kill_actors()
        # A driver left connected to a cluster that goes away exits its whole process once
        # Ray gives up reconnecting: always let go.
        ray.shutdown()


__all__ = ["RayTransport", "scheduler_error"]
