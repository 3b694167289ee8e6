"""The gateway under Ray's supervision: a detached actor on the head that serves the app with
uvicorn on its own event loop. Ray restarts it when it dies (even by SIGKILL), and it listens
again right after the restart, without waiting for a caller.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tryfleet.errors import BadRequest, FleetUnavailable
from tryfleet.logs import LogSetup
from tryfleet.private import harden, set_private_umask
from tryfleet.selfstart import kick_self
from tryfleet.wire import NAMESPACE

GATEWAY_NAME = "tryfleet-gateway"
DEFAULT_LISTEN = "127.0.0.1:8470"
log = logging.getLogger("tryfleet.gateway")


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port); BadRequest saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadRequest(f"--api-listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8470")
    return host.strip("[]"), int(port)


class Gateway:
    def __init__(self, data_dir: str, ledger_path: str, listen: str,
                 audit: bool = True, log: LogSetup | None = None) -> None:
        """audit False: a gateway that records nothing in the audit trail (for the `api`
        benchmark's comparison of its cost; never what `tryfleet up` starts). log: how this
        process logs (None: as it is set up already)."""
        if log is not None:
            log.apply("gateway", data_dir)
        self.data_dir, self.ledger_path = Path(data_dir), Path(ledger_path)
        set_private_umask()  # what this process makes (audit.db, secrets) is its owner's
        harden(self.data_dir)  # and what older versions left readable is put right
        self.audit = audit
        self.host, self.port = parse_listen(listen)
        self._serving: asyncio.Task[None] | None = None
        self._server: Any = None
        self.url = ""
        kick_self("start")  # an actor: serve right away, also after a restart

    async def start(self) -> str:
        """Serve (once); the URL it listens on."""
        if self._server is None:
            await self._serve()
        while not self._server.started:
            if self._serving is not None and self._serving.done():
                self._server = None
                raise FleetUnavailable(f"the gateway could not listen on "
                                       f"{self.host}:{self.port} (in use?)")
            await asyncio.sleep(0.01)
        self._listening()  # a caller that raced the first start sees the URL too
        return self.url

    def _listening(self) -> None:
        if not self.url:
            sock = self._server.servers[0].sockets[0].getsockname()
            self.url = f"http://{_url_host(sock[0])}:{sock[1]}"
            log.info("gateway listening on %s", self.url)

    async def _serve(self) -> None:
        import uvicorn

        from tryfleet.audit import Audit

        from .app import create_app
        from .calls import FleetCalls
        from .keys import KeyStore
        from .policy import Policies

        audit = Audit(self.data_dir) if self.audit else None  # appends fail closed
        keys = KeyStore(self.ledger_path, self.data_dir, audit=audit)
        app = create_app(FleetCalls(), keys, Policies(self.data_dir), self.ledger_path,
                         audit=audit)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                access_log=False, lifespan="off", timeout_keep_alive=30,
                                log_config=None)  # its lines go to this process's handlers
        self._server = server = uvicorn.Server(config)
        self._serving = asyncio.create_task(server.serve())
        while not server.started and not self._serving.done():
            await asyncio.sleep(0.01)
        if server.started:
            self._listening()

    async def ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "url": await self.start()}


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def start_gateway(data_dir: Path, ledger_path: Path, listen: str = DEFAULT_LISTEN,
                  detached: bool = True, audit: bool = True) -> tuple[Any, str]:
    """The gateway actor on this node (created if missing) and the URL it serves; audit
    False: one that records nothing in the audit trail (benchmarks only)."""
    parse_listen(listen)
    here = ray.get_runtime_context().get_node_id()
    options: dict[str, Any] = {
        "name": GATEWAY_NAME, "namespace": NAMESPACE, "get_if_exists": True, "num_cpus": 0,
        "max_restarts": -1, "max_concurrency": 1000,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=False)}
    if detached:
        options["lifetime"] = "detached"
    actor: Any = ray.remote(Gateway).options(**options).remote(str(data_dir),
                                                               str(ledger_path), listen,
                                                               audit, LogSetup.from_env())
    got: dict[str, Any] = ray.get(actor.ping.remote(), timeout=60)
    return actor, str(got["url"])


__all__ = ["DEFAULT_LISTEN", "GATEWAY_NAME", "Gateway", "parse_listen", "start_gateway"]
