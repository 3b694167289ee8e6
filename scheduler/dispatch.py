"""Dispatch: hands placed attempts to their hosts and brings their outcomes back.

Few Ray calls whatever the volume: one `start_many` per host and scheduling pass, and one
long-poll per host (`collect`) that returns every outcome finished there at once; the next
poll acknowledges them, after the scheduler committed them to the ledger, so the host forgets
an outcome only once it is on disk. What an outcome means (finish, retry, fencing) is the
scheduler's business: the dispatcher reports outcomes and lost hosts through callbacks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import ray

from tryfleet.wire import AttemptInfo, AttemptKey, Ids, Outcome, StartRequest, pack, unpack_list

from .core import Launch
from .hosts import Endpoint, Hosts

log = logging.getLogger("tryfleet.scheduler")
WAIT_CHUNK_S = 10.0  # a long-poll returns empty after this long
COLLECT_LINGER_S = 0.002  # once one outcome is in, wait this long for others to join it
RETRY_PAUSE_S = 0.5
CANCEL_RETRY_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # pauses before asking a host again to cancel


SecretEnv = Callable[[str, Sequence[str]], Sequence[tuple[str, str]]]


def no_secrets(tenant: str, names: Sequence[str]) -> Sequence[tuple[str, str]]:
    return ()


def start_request(lc: Launch, secret_env: SecretEnv = no_secrets) -> StartRequest:
    """The attempt is known on its host by the iteration's key (unique across tenants); its
    Ids carry the tenant's own names and the request that submitted it, for the host's logs.
    The secrets it names join its env here, on their way to the host (and nowhere else)."""
    row = lc.row
    spec = row.iteration.to_spec()
    if row.iteration.secrets:
        env = dict(spec.env) | dict(secret_env(row.tenant, row.iteration.secrets))
        spec = dataclasses.replace(spec, env=tuple(sorted(env.items())))
    return StartRequest(row.key, lc.attempt, spec, Ids(
        tenant=row.tenant, suite=row.suite, iteration=row.id, attempt=lc.attempt,
        trace_id=row.trace_id, host=lc.host, request_id=row.request_id, key=row.key_id))


class Dispatcher:
    def __init__(self, hosts: Hosts,
                 on_outcomes: Callable[[str, list[Outcome]], None],
                 on_lost: Callable[[str, str], None],
                 secret_env: SecretEnv = no_secrets) -> None:
        self.hosts = hosts
        self.secret_env = secret_env  # (tenant, names) -> their (name, value)s
        self.on_outcomes = on_outcomes  # (host, outcomes); raises if they were not recorded
        self.on_lost = on_lost  # (host, why): settle everything that was on it
        self._collectors: dict[str, tuple[Endpoint, asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = {"start_many": 0, "collect": 0}
        self.collected = 0

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- starting --------------------------------------------------------------------------
    def start(self, host: str, launches: Sequence[Launch]) -> None:
        """Send these attempts to host in one call. The call leaves now, so a cancel sent
        after this reaches the host after it; its answer is awaited in the background."""
        ep = self.hosts.endpoint(host)
        ref = None
        if ep is not None:
            self.calls["start_many"] += 1
            try:
                ref = ep.call("start_many", pack([start_request(lc, self.secret_env)
                                                 for lc in launches]))
            except ray.exceptions.RayError:
                ref = None
            self.ensure_collector(host)
        self._spawn(self._started(host, ep, ref))

    async def _started(self, host: str, ep: Endpoint | None, ref: Any) -> None:
        try:
            if ref is None:
                raise ConnectionError(f"host {host} is gone")
            await ref
        except (ray.exceptions.RayError, ConnectionError) as err:
            now = self.hosts.endpoint(host)
            if now is None or now is ep:  # not about an agent found again since
                self._lost(host, f"host {host} lost: {err}")

    def _lost(self, host: str, why: str) -> None:
        self.hosts.mark_lost(host)
        self.on_lost(host, why)

    # ---- collecting ------------------------------------------------------------------------
    def ensure_collector(self, host: str) -> None:
        """One long-poll loop per reachable host; a host found again gets a new one."""
        ep = self.hosts.endpoint(host)
        if ep is None:
            return
        running = self._collectors.get(host)
        if running is not None and running[0] is ep and not running[1].done():
            return
        self._collectors[host] = (ep, self._spawn(self._collect(host, ep)))

    async def _collect(self, host: str, ep: Endpoint) -> None:
        acks: list[AttemptKey] = []
        while self.hosts.endpoint(host) is ep:
            try:
                self.calls["collect"] += 1
                got = await ep.call("collect", pack(acks), WAIT_CHUNK_S, COLLECT_LINGER_S)
            except ray.exceptions.RayError as err:
                if self.hosts.endpoint(host) is ep:
                    self._lost(host, f"host {host} lost: {err}")
                return
            outcomes = unpack_list(Outcome, got)
            acks = []
            if not outcomes:
                continue
            try:
                self.on_outcomes(host, outcomes)
            except Exception:  # not recorded: not acknowledged, so the host sends them again
                log.exception("recording %d outcome(s) from %s failed; will retry",
                              len(outcomes), host, extra={"host": host})
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            self.collected += len(outcomes)
            acks = [o.key for o in outcomes]

    async def known(self, host: str) -> set[tuple[str, int]] | None:
        """The attempts host knows of; None when it cannot be asked."""
        ep = self.hosts.endpoint(host)
        if ep is None:
            return None
        try:
            return {(a.id, a.attempt)
                    for a in unpack_list(AttemptInfo, await ep.call("attempts"))}
        except ray.exceptions.RayError as err:
            self._lost(host, f"host {host} lost: {err}")
            return None

    # ---- stopping --------------------------------------------------------------------------
    async def cancel(self, host: str, attempts: Sequence[tuple[str, int]],
                     flying: Callable[[str, int], bool]) -> None:
        """Ask host to stop these attempts. One its host did not know yet (its start still on
        the way) is asked again, in the background, while flying(id, attempt) says it is
        still out there."""
        for pause in (0.0, *CANCEL_RETRY_S):
            await asyncio.sleep(pause)
            attempts = [a for a in attempts if flying(*a)]
            ep = self.hosts.endpoint(host)
            if not attempts or ep is None:
                return
            got = await asyncio.gather(*(ep.call("cancel", iid, n) for iid, n in attempts),
                                       return_exceptions=True)
            attempts = [a for a, n in zip(attempts, got, strict=True) if n == 0]

    async def cancel_all(self) -> None:
        await asyncio.gather(*(h.endpoint.call("cancel_all") for h in self.hosts.alive()),
                             return_exceptions=True)

    async def sandboxes(self, host: str) -> set[str] | None:
        """The sandboxes host holds open; None when it cannot say."""
        ep = self.hosts.endpoint(host)
        if ep is None:
            return None
        try:
            return set(unpack_list(str, await ep.call("sandbox_list")))
        except Exception as err:  # an agent without sandboxes (simulated), or gone
            log.warning("cannot ask %s which sandboxes it holds: %s", host, err,
                        extra={"host": host})
            return None

    async def close_sandbox(self, host: str, sid: str) -> None:
        ep = self.hosts.endpoint(host)
        if ep is not None:
            try:
                await ep.call("sandbox_close", sid)
            except ray.exceptions.RayError as err:
                log.warning("closing sandbox %s on %s failed: %s", sid, host, err,
                            extra={"sandbox": sid, "host": host})
