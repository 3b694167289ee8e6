"""The real gateway app served by uvicorn on loopback in this process, over the fleet of
apifleet.py (the real scheduler and ledger, one node agent on the fake hypervisor as host h1):
the SDK and the CLI reach it over real HTTP with real keys, with no Ray and no VM. What the
client reads of the server's answers is pinned here against the server itself (fakeapi.py is
the client's reading of the contract; this is the contract)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from tryfleet.audit import Audit
from tryfleet.gateway.app import create_app
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.gateway.policy import Policies
from tryfleet.nodeagent.actor import NodeActor
from tryfleet.scheduler.service import Scheduler
from tryfleet.wire import NODE_ACTOR_PREFIX

from .apifleet import HOST, InProcessFleet, Threaded


@dataclass
class Served:
    url: str
    admin: str  # an admin key
    keys: KeyStore
    scheduler: Scheduler
    data_dir: Path
    app: Any  # the FastAPI app (its state: audit, keys, ...)
    audit: Audit | None = None
    node: NodeActor | None = None

    def key(self, tenant: str, *scopes: str) -> str:
        """A new key of tenant (default scopes: sandbox and batch)."""
        _, token = self.keys.create(tenant, frozenset(Scope(s) for s in scopes or
                                                      ("sandbox", "batch")), created_by="test")
        return token


@contextlib.contextmanager
def served_api(tmp_path: Path, limits: dict[str, int] | None = None,
               audit: bool = False) -> Iterator[Served]:
    """audit: the gateway and the scheduler record in the data dir's audit trail."""
    data = tmp_path / "data"
    data.mkdir()
    ledger = data / "ledger.db"
    node = NodeActor(str(data / "node"), HOST, fake=True)
    sched = Scheduler(str(ledger), limits=limits, audit_dir=str(data) if audit else None)
    sched.engine.hosts.discover = lambda: []  # type: ignore[method-assign]
    sched.engine.hosts.agents = {NODE_ACTOR_PREFIX + HOST: Threaded(node)}
    keys = KeyStore(ledger, data)
    _, admin = keys.create("default", frozenset({Scope.ADMIN}), created_by="test")
    trail = Audit(data) if audit else None
    app = create_app(InProcessFleet(sched, node), keys, Policies(data), ledger, audit=trail)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(f"http://127.0.0.1:{port}", admin, keys, sched, data, app, trail, node)
    finally:
        server.should_exit = True
        thread.join(30)
        node.shutdown()
        keys.close()
        for opened in (trail, sched.engine.audit):
            if opened is not None:
                opened.close()


__all__ = ["Served", "served_api"]
