"""How the gateway reaches the fleet: awaited Ray actor calls to the scheduler and, for what
happens inside a sandbox, to the node agent of its host (one hop, no detour through the
scheduler). Errors come back as tryfleet's own: the scheduler's refusals as raised, a scheduler
that is restarting as FleetUnavailable once it has not come back within a few seconds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import ray

from tryfleet.errors import FleetUnavailable, InfrastructureError, TryfleetError
from tryfleet.scheduler.service import SCHEDULER_NAME
from tryfleet.wire import NAMESPACE, NODE_ACTOR_PREFIX

RESTART_WAIT_S = 10.0
RETRY_PAUSE_S = 0.2


def _ours(err: ray.exceptions.RayTaskError) -> BaseException:
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, TryfleetError) else err


class FleetCalls:
    def __init__(self) -> None:
        self._sched: Any = None
        self._nodes: dict[str, Any] = {}

    def _scheduler(self) -> Any:
        if self._sched is None:
            try:
                self._sched = ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
            except ValueError:
                raise FleetUnavailable("no tryfleet scheduler is running: start the fleet "
                                       "with `tryfleet up`") from None
        return self._sched

    async def sched(self, method: str, *args: Any) -> Any:
        """Call the scheduler; while Ray restarts it, wait up to RESTART_WAIT_S for it."""
        deadline = asyncio.get_running_loop().time() + RESTART_WAIT_S
        while True:
            try:
                return await getattr(self._scheduler(), method).remote(*args)
            except ray.exceptions.RayTaskError as err:
                raise _ours(err) from None
            except (ray.exceptions.RayActorError, FleetUnavailable) as err:
                self._sched = None
                if asyncio.get_running_loop().time() >= deadline:
                    raise FleetUnavailable(f"the scheduler did not answer: {err}") from None
                await asyncio.sleep(RETRY_PAUSE_S)

    def _node(self, host: str) -> Any:
        if host not in self._nodes:
            try:
                self._nodes[host] = ray.get_actor(NODE_ACTOR_PREFIX + host,
                                                  namespace=NAMESPACE)
            except ValueError:
                raise InfrastructureError(f"host {host} has no node agent running") from None
        return self._nodes[host]

    async def node(self, host: str, method: str, *args: Any) -> Any:
        """Call the node agent of host (every node call names its host first)."""
        try:
            return await getattr(self._node(host), method).remote(host, *args)
        except ray.exceptions.RayTaskError as err:
            raise _ours(err) from None
        except ray.exceptions.RayActorError as err:
            self._nodes.pop(host, None)
            raise InfrastructureError(f"host {host} did not answer: {err}") from None

    async def node_stream(self, host: str, method: str, *args: Any) -> AsyncIterator[bytes]:
        """A streaming call to the node agent of host: each item as it comes."""
        fn = getattr(self._node(host), method)
        try:
            async for ref in fn.options(num_returns="streaming").remote(host, *args):
                yield await ref
        except ray.exceptions.RayTaskError as err:
            raise _ours(err) from None
        except ray.exceptions.RayActorError as err:
            self._nodes.pop(host, None)
            raise InfrastructureError(f"host {host} did not answer: {err}") from None


__all__ = ["FleetCalls"]
