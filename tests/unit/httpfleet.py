"""The gateway's app over a fleet in this process (apifleet.py: the real scheduler, a node
agent on the fake hypervisor), served by uvicorn on a loopback port in a thread of its own, for
clients that need a real HTTP server (the official E2B SDKs). Each fake guest's root has the
base image's accounts (root, and E2B's `user` with its home), as a VM of it would."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from tryfleet.audit import Audit
from tryfleet.gateway.app import create_app
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.gateway.policy import Policies
from tryfleet.nodeagent.actor import NodeActor
from tryfleet.nodeagent.fake_hv import FakeHypervisor
from tryfleet.nodeagent.hypervisor import DomainSpec
from tryfleet.scheduler.service import Scheduler
from tryfleet.wire import NODE_ACTOR_PREFIX

from .apifleet import HOST, InProcessFleet, Threaded
from .localfleet import cancel_until_ended


class HttpFleet:
    def __init__(self, url: str, keys: KeyStore, fleet: InProcessFleet, data: Path,
                 audit: Audit | None = None) -> None:
        self.url, self.keys, self.fleet, self.data = url, keys, fleet, data
        self.audit = audit

    def key(self, tenant: str = "acme", *scopes: Scope) -> str:
        _, token = self.keys.create(tenant, frozenset(scopes or {Scope.SANDBOX}),
                                    created_by="test")
        return token


ACCOUNTS = {"etc/passwd": "root:x:0:0:root:/root:/bin/bash\n"
                          "user:x:1000:1000::/home/user:/bin/bash\n",
            "etc/group": "root:x:0:\nuser:x:1000:\n"}


@contextlib.contextmanager
def _guests_with_accounts() -> Iterator[None]:
    start = FakeHypervisor.start

    def start_with_accounts(self: FakeHypervisor, spec: DomainSpec) -> None:
        start(self, spec)
        root = self.guest_root(spec.name)
        for name, text in ACCOUNTS.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        (root / "home" / "user").mkdir(parents=True, exist_ok=True)

    FakeHypervisor.start = start_with_accounts  # type: ignore[method-assign]
    try:
        yield
    finally:
        FakeHypervisor.start = start  # type: ignore[method-assign]


@contextlib.contextmanager
def http_fleet(tmp_path: Path, policy: str = "", audit: bool = False) -> Iterator[HttpFleet]:
    """The fleet served on a free loopback port; `policy`: the text of its policy.toml;
    `audit`: the gateway records in the data dir's audit trail."""
    with _guests_with_accounts():
        yield from _http_fleet(tmp_path, policy, audit)


def _http_fleet(tmp_path: Path, policy: str, audit: bool) -> Iterator[HttpFleet]:
    data = tmp_path / "data"
    data.mkdir()
    if policy:
        (data / "policy.toml").write_text(policy)
    ledger = data / "ledger.db"
    node = NodeActor(str(data / "node"), HOST, fake=True)
    sched = Scheduler(str(ledger))
    sched.engine.hosts.discover = lambda: []  # type: ignore[method-assign]
    sched.engine.hosts.agents = {NODE_ACTOR_PREFIX + HOST: Threaded(node)}
    keys = KeyStore(ledger, data)
    fleet = InProcessFleet(sched, node)
    trail = Audit(data) if audit else None
    app = create_app(fleet, keys, Policies(data), ledger, audit=trail)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           access_log=False, lifespan="off"))

    async def serve() -> None:
        await server.serve()
        await cancel_until_ended()  # the scheduler's loop

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True,
                              name="httpfleet")
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield HttpFleet(f"http://127.0.0.1:{port}", keys, fleet, data, trail)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        node.shutdown()
        keys.close()
        if trail is not None:
            trail.close()
