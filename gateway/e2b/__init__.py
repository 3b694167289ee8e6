"""An E2B-compatible sandbox API on the gateway's port: the official E2B SDKs (Python `e2b`
2.x, JavaScript `e2b`), unmodified, work against tryfleet with `E2B_API_URL` and
`E2B_SANDBOX_URL` both set to the gateway and `E2B_API_KEY` set to a tryfleet key.

- control.py: E2B's REST control plane (create, connect, get, list, timeout, kill), over the
  same sandbox operations as /v1 (policy, quotas, the ledger, request and key ids);
- envd.py, files.py, filesystem.py, process.py: E2B's in-sandbox daemon protocol, routed by
  the `E2b-Sandbox-Id` header (its paths overlap none of the control plane's): files over HTTP,
  the filesystem and process services over Connect RPC with the JSON codec (connect.py,
  protojson.py), straight to the sandbox's node agent;
- processes.py: the processes of a sandbox, as the process service needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import FastAPI

from . import control, files, filesystem, process
from .processes import NodeProcesses, Processes
from .sandbox_env import EnvCache


@dataclass
class E2BState:
    """What the adapter keeps in a gateway: envVars it has seen, and where processes are."""

    envs: EnvCache = field(default_factory=EnvCache)
    processes: Processes = field(default_factory=NodeProcesses)

    def forget(self, sid: str) -> None:
        """A sandbox closed through this gateway."""
        self.envs.forget(sid)


def install(app: FastAPI) -> None:
    app.state.e2b = E2BState()
    for module in (control, files, filesystem, process):
        app.include_router(module.router)


__all__ = ["E2BState", "install"]
