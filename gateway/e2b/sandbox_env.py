"""What an E2B sandbox has beyond a tryfleet one: the users' home directories, and the
environment variables given at its creation (`envVars`), which every command run in it gets.

The variables live in the sandbox itself (ENV_FILE, readable by root only), never in the
ledger: they often hold secrets, and a sandbox's secrets should evaporate with it. A gateway
keeps those it has seen in a bounded cache and reads the file once for a sandbox another
gateway made.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import OrderedDict
from typing import Any

from fastapi import Request

from tryfleet.errors import NotFound, TryfleetError
from tryfleet.scheduler.sandboxes import SandboxRecord
from tryfleet.wire import SandboxGone

log = logging.getLogger("tryfleet.gateway")
ENV_FILE = "/etc/tryfleet/e2b-env.json"
HOMES = {"user": "/home/user", "root": "/root"}
DEFAULT_USER = "user"
MAX_CACHED = 4096


class EnvCache:
    """Each sandbox's envVars, as far as this gateway has seen them (least recent dropped)."""

    def __init__(self, most: int = MAX_CACHED) -> None:
        self._most = most
        self._envs: OrderedDict[str, dict[str, str]] = OrderedDict()

    def get(self, sid: str) -> dict[str, str] | None:
        found = self._envs.get(sid)
        if found is not None:
            self._envs.move_to_end(sid)
        return found

    def put(self, sid: str, envs: dict[str, str]) -> None:
        self._envs[sid] = dict(envs)
        self._envs.move_to_end(sid)
        while len(self._envs) > self._most:
            self._envs.popitem(last=False)

    def forget(self, sid: str) -> None:
        self._envs.pop(sid, None)

    def __contains__(self, sid: object) -> bool:
        return sid in self._envs


async def _node(request: Request, rec: SandboxRecord, method: str, *args: Any) -> Any:
    return await request.app.state.fleet.node(rec.host, method, rec.id, *args)


async def prepare(request: Request, rec: SandboxRecord, envs: dict[str, str]) -> None:
    """A sandbox just opened made ready for E2B's SDKs: the default user's home, the
    variables kept. A sandbox that cannot be made ready is closed, and the error raised."""
    try:
        await _node(request, rec, "sandbox_mkdir", HOMES[DEFAULT_USER], True)
        if envs:
            await _node(request, rec, "sandbox_write", ENV_FILE,
                        json.dumps({"envs": envs}).encode(), 0o600, False)
    except BaseException:
        await request.app.state.fleet.sched("close_sandbox", rec.id, None,
                                            "could not be made ready for E2B's SDK")
        raise
    request.app.state.e2b.envs.put(rec.id, envs)


async def ensure_home(request: Request, rec: SandboxRecord) -> None:
    """The default user's home, in a sandbox that was not made through this API (/v1's)."""
    with contextlib.suppress(TryfleetError):  # a sandbox that is gone says so at its next use
        await _node(request, rec, "sandbox_mkdir", HOMES[DEFAULT_USER], True)


async def envs_of(request: Request, rec: SandboxRecord) -> dict[str, str]:
    """The sandbox's envVars: from this gateway's cache, else from the sandbox."""
    cache: EnvCache = request.app.state.e2b.envs
    found = cache.get(rec.id)
    if found is not None:
        return found
    try:
        raw = await _node(request, rec, "sandbox_read", ENV_FILE, 0, 1 << 20)
    except SandboxGone:
        raise
    except NotFound:
        raw = b""
    except TryfleetError as err:
        log.warning("sandbox %s: its envVars could not be read: %s", rec.id, err)
        return {}
    envs: dict[str, str] = {}
    try:
        got = json.loads(raw).get("envs", {}) if raw else {}
        if isinstance(got, dict):
            envs = {k: v for k, v in got.items() if isinstance(k, str) and isinstance(v, str)}
    except (ValueError, AttributeError):
        log.warning("sandbox %s: %s does not hold its envVars", rec.id, ENV_FILE)
    cache.put(rec.id, envs)
    return envs


__all__ = ["DEFAULT_USER", "ENV_FILE", "HOMES", "EnvCache", "ensure_home", "envs_of", "prepare"]
