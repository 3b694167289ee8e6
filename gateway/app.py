"""The gateway's ASGI app: /v1 resources, /healthz, OpenAPI at /openapi.json and docs at /docs.

Stateless: what it knows comes from the scheduler (through `FleetCalls`) and the ledger (keys,
and reads), so several can run. Every response carries `X-Request-Id` (a well-formed one the
client sent is kept), and the id goes with everything the request causes.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tryfleet import __version__, logs
from tryfleet.audit import Audit
from tryfleet.scheduler.sandboxes import SandboxBook
from tryfleet.scheduler.switch_book import SwitchBook
from tryfleet.secretstore import SecretStore

from . import auditing, controlroom, e2b, problems
from .keys import KeyStore
from .metrics import measured, serving
from .policy import Policies
from .routes import audit as audit_routes
from .routes import fleet as fleet_routes
from .routes import iterations as iteration_routes
from .routes import keys as keys_routes
from .routes import live as live_routes
from .routes import meta, sandbox_files, sandboxes
from .routes import metrics as metrics_routes
from .routes import secrets as secret_routes
from .routes import suites as suite_routes
from .routes import switches as switch_routes

MAX_BODY_BYTES = 128 * 1024 * 1024  # the largest request body (a file upload), in bytes
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
log = logging.getLogger("tryfleet.gateway")
access_log = logging.getLogger("tryfleet.gateway.access")


def new_request_id() -> str:
    return "req_" + uuid.uuid4().hex


class RequestIds:
    """Plain ASGI middleware (cheaper than Starlette's): the request's id into
    request.state.request_id and out in the X-Request-Id response header; a body over
    MAX_BODY_BYTES refused with 413 before it is read. The request id and trace id are bound
    to every log line the request causes here (the key check adds its tenant and key); as it
    ends, it is counted in the metrics and one line says how it ended (logger
    tryfleet.gateway.access)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        sent = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = sent if _REQUEST_ID.match(sent) else new_request_id()
        trace = headers.get(b"traceparent", b"").decode("latin-1")
        with logs.bind(request_id=rid, trace_id=auditing.trace_id_of(trace)):
            await self._serve(scope, receive, send, rid, headers.get(b"content-length"))

    async def _serve(self, scope: Scope, receive: Receive, send: Send, rid: str,
                     length: bytes | None) -> None:
        started, status = time.perf_counter(), 0
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _too_large(scope, send, rid)
            _ended(scope, 413, started)
            return

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        received = 0

        async def counted() -> Message:
            nonlocal received
            got = await receive()
            if got["type"] == "http.request":
                received += len(got.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise problems.Problem(413, "too-large", f"the request body is over "
                                           f"{MAX_BODY_BYTES} bytes")
            return got

        try:
            await self.app(scope, counted, send_with_id)
        finally:
            _ended(scope, status, started)


def _ended(scope: Scope, status: int, started: float) -> None:
    """The request counted in the metrics (as a 500 when no answer started) and its access
    line (status 0: no answer started, the client went away or the app failed); no access
    line for health checks."""
    seconds = time.perf_counter() - started
    measured(scope, status or 500, seconds)
    if scope.get("path") == "/healthz" or not access_log.isEnabledFor(logging.INFO):
        return
    route = auditing.route_of(scope)
    who = scope.get("state", {}).get("principal")  # the key check's, whichever task made it
    extra: dict[str, Any] = {"method": scope.get("method", ""), "route": route,
                             "status": status, "duration_s": round(seconds, 6)}
    if who is not None:
        extra |= {"tenant": who.tenant, "key": who.key_id}
    access_log.info("%s %s -> %d", extra["method"], route, status, extra=extra)


async def _too_large(scope: Scope, send: Send, rid: str) -> None:
    import json

    body = json.dumps({"type": "urn:tryfleet:problem:too-large", "title": "Too large",
                       "status": 413, "detail": f"the request body is over {MAX_BODY_BYTES} "
                       "bytes", "instance": scope.get("path"), "request_id": rid}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", problems.MEDIA_TYPE.encode()), (b"x-request-id", rid.encode()),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(fleet: Any, keys: KeyStore, policies: Policies, ledger_path: Path,
               audit: Audit | None = None) -> FastAPI:
    """The app over a fleet (FleetCalls, or a stand-in with the same methods in tests).
    With an audit trail, every API call and what it does is recorded there before it is done
    (auditing.py); without one (None), nothing is, and /v1/audit answers 503."""
    app = FastAPI(title="tryfleet", version=__version__, openapi_url="/openapi.json",
                  docs_url="/docs", redoc_url=None,
                  description="Throwaway micro-VMs for the try-until-it-works loops of "
                              "AI-agent fleets. Every /v1 call needs an API key: "
                              "`Authorization: Bearer <key>`. Errors are "
                              "application/problem+json (RFC 9457).")
    app.state.keys, app.state.policies = keys, policies
    app.state.fleet = fleet if audit is None else auditing.FleetSettling(fleet)
    app.state.ledger_path = ledger_path
    app.state.audit = audit
    app.state.sandboxes = SandboxBook(ledger_path)  # reads: who owns a sandbox, where it runs
    app.state.switch_book = SwitchBook(ledger_path)  # reads: the kill switches in force
    app.state.secrets = SecretStore(policies.path.parent)  # both in the data directory
    problems.install(app)
    app.include_router(meta.router)
    app.include_router(controlroom.router)  # the control room's page, and its live view
    app.include_router(live_routes.router)
    app.include_router(keys_routes.router)
    app.include_router(secret_routes.router)
    app.include_router(audit_routes.router)
    app.include_router(sandboxes.router)
    app.include_router(sandbox_files.router)
    app.include_router(iteration_routes.router)
    app.include_router(suite_routes.router)
    app.include_router(fleet_routes.router)
    app.include_router(switch_routes.router)
    app.include_router(metrics_routes.router)
    e2b.install(app)  # E2B's SDKs: its control plane and in-sandbox API, same port
    _mount_mcp(app)
    app.add_middleware(auditing.AuditCalls)  # inside RequestIds: the request id is known
    app.add_middleware(RequestIds)  # outermost: every answer counted, refusals of size too
    serving()
    return app


def _mount_mcp(app: FastAPI) -> None:
    """The MCP server at /mcp (mcp_mount.py), when the `mcp` package is installed (the fleet
    extra has it)."""
    if importlib.util.find_spec("mcp") is None:
        log.warning("no MCP server at /mcp: the `mcp` package is not installed "
                    "(pip install 'tryfleet[fleet]')")
        return
    from .mcp_mount import mount_mcp

    mount_mcp(app)


__all__ = ["MAX_BODY_BYTES", "RequestIds", "create_app", "new_request_id"]
