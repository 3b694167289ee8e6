"""The gateway's app over a fleet in this process, for API tests without Ray or VMs: the real
Scheduler (engine, ledger, its sandboxes), one node agent on the fake hypervisor (the real
guest agent in threads) as host h1, real keys and policy, and a stand-in for FleetCalls that
calls them directly instead of through Ray."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tryfleet.audit import Audit
from tryfleet.gateway.app import create_app
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.gateway.policy import Policies
from tryfleet.nodeagent.actor import NodeActor
from tryfleet.scheduler.service import Scheduler
from tryfleet.wire import NODE_ACTOR_PREFIX

HOST = "h1"
_END = object()


class Threaded:
    """handle.method.remote(*args): the node agent's (blocking) method in a worker thread."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._obj, name)
        return types.SimpleNamespace(remote=lambda *args: asyncio.ensure_future(
            asyncio.to_thread(fn, *args)))


class InProcessFleet:
    """What the app needs of FleetCalls, over the objects themselves."""

    def __init__(self, sched: Scheduler, node: NodeActor) -> None:
        self.scheduler, self.node_actor = sched, node

    async def sched(self, method: str, *args: Any) -> Any:
        return await getattr(self.scheduler, method)(*args)

    async def node(self, host: str, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(self.node_actor, method), host, *args)

    async def node_stream(self, host: str, method: str, *args: Any) -> AsyncIterator[bytes]:
        items = await asyncio.to_thread(getattr(self.node_actor, method), host, *args)
        while (item := await asyncio.to_thread(next, items, _END)) is not _END:
            yield item


class Api:
    def __init__(self, client: TestClient, keys: KeyStore, fleet: InProcessFleet,
                 data_dir: Path, audit: Audit | None = None) -> None:
        self.client, self.keys, self.fleet, self.data_dir = client, keys, fleet, data_dir
        self.audit = audit

    def key(self, tenant: str = "acme", *scopes: Scope, **kw: Any) -> dict[str, str]:
        _, token = self.keys.create(tenant, frozenset(scopes or {Scope.SANDBOX}),
                                    created_by="test", **kw)
        return {"Authorization": f"Bearer {token}"}

    def __getattr__(self, name: str) -> Any:  # get, post, put, delete, stream
        return getattr(self.client, name)


@contextlib.contextmanager
def api_fleet(tmp_path: Path, audit: bool = False) -> Iterator[Api]:
    """audit: the app records in an audit trail of its data dir (api.audit)."""
    data = tmp_path / "data"
    data.mkdir()
    ledger = data / "ledger.db"
    node = NodeActor(str(data / "node"), HOST, fake=True)
    sched = Scheduler(str(ledger), audit_dir=str(data) if audit else None)
    sched.engine.hosts.discover = lambda: []  # type: ignore[method-assign]
    sched.engine.hosts.agents = {NODE_ACTOR_PREFIX + HOST: Threaded(node)}
    trail = Audit(data) if audit else None
    keys = KeyStore(ledger, data, audit=trail)
    fleet = InProcessFleet(sched, node)
    app = create_app(fleet, keys, Policies(data), ledger, audit=trail)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Api(client, keys, fleet, data, trail)
    finally:
        node.shutdown()
        keys.close()
        for opened in (trail, sched.engine.audit):
            if opened is not None:
                opened.close()
