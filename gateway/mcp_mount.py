"""The MCP server at /mcp on the gateway's port: streamable HTTP (the official `mcp` SDK),
authenticated with tryfleet's own keys (`Authorization: Bearer <key>`; none, or a bad one:
401), each tool acting for the key's tenant through the /v1 route functions (mcp_backend.py),
and a key shown and allowed only the tools its scopes cover.

Stateless, like the rest of the gateway: every POST stands alone (no MCP session to lose when
the gateway restarts, or to pin to one of several gateways), and its X-Request-Id is the id of
what the tool call does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tryfleet.mcptools.server import build_server

from .auditing import current
from .keys import KeyStore, Principal
from .keys import Scope as KeyScope
from .mcp_backend import MCP_PATH, GatewayBackend
from .metrics import denied

MAX_MCP_BODY_BYTES = 16 * 1024 * 1024  # a write_file of 8 MiB, as base64 in JSON-RPC
# tryfleet keys are not OAuth tokens: no authorization server, so none is advertised (no
# resource_server_url: no metadata routes); AuthSettings requires an issuer all the same.
AUTH = AuthSettings(issuer_url="https://tryfleet.invalid/keys",  # type: ignore[arg-type]
                    resource_server_url=None, required_scopes=None)
# A page that rebinds a name to this host cannot use the endpoint without a key, which it does
# not have; the SDK's Host check would refuse every name but localhost's (the gateway may
# listen on any address).
OPEN_HOSTS = TransportSecuritySettings(enable_dns_rebinding_protection=False)


class KeyVerifier:
    """The MCP SDK's TokenVerifier over the gateway's KeyStore: a key's id as the client id,
    its scopes, its tenant in the claims; None for an unknown, revoked or expired key."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    async def verify_token(self, token: str) -> AccessToken | None:
        who = self.keys.verify(token)
        if who is None:
            denied("bad_key")
            return None
        call = current()  # the /mcp request's: its key on the request's audit records
        if call is not None:
            call.admit(who)
        return AccessToken(token=token, client_id=who.key_id, scopes=sorted(who.scopes),
                           claims={"tenant": who.tenant})


def caller_scopes() -> frozenset[str]:
    """The scopes of the key of the request being handled (none without one)."""
    token = get_access_token()
    return frozenset(token.scopes) if token is not None else frozenset()


def backend_for(app: FastAPI, ctx: Context[Any, Any]) -> GatewayBackend:
    """The backend of one tool call: the caller's key, the HTTP request it came in."""
    token = get_access_token()
    if token is None:  # the SDK's RequireAuthMiddleware lets none through without one
        raise ToolError("this call carries no key [unauthorized]")
    who = Principal(token.client_id, str((token.claims or {}).get("tenant")),
                    frozenset(KeyScope(s) for s in token.scopes))
    base = ctx.request_context.request
    return GatewayBackend(app, who, base if isinstance(base, Request) else None)


class LazilyStarted:
    """The MCP app, its session manager started by the first request and running from then on
    in this event loop (the gateway's uvicorn runs without lifespan events)."""

    def __init__(self, app: ASGIApp, manager: StreamableHTTPSessionManager) -> None:
        self.app, self.manager = app, manager
        self._ready = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._run())
        if not self._ready.is_set():
            waiting = asyncio.ensure_future(self._ready.wait())
            await asyncio.wait({waiting, self._running}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if self._running.done():  # it could not start (it starts once): say why
                self._running.result()
                raise RuntimeError("the MCP session manager stopped")
        await self.app(scope, receive, send)

    async def _run(self) -> None:
        async with self.manager.run():
            self._ready.set()
            await asyncio.Event().wait()  # until the event loop ends


def mount_mcp(app: FastAPI) -> None:
    """Serve the MCP server at /mcp of app (all methods: POST, GET, DELETE)."""
    server = build_server(lambda ctx: backend_for(app, ctx), caller_scopes,
                          token_verifier=KeyVerifier(app.state.keys), auth=AUTH)
    served = server.streamable_http_app(streamable_http_path=MCP_PATH, stateless_http=True,
                                        transport_security=OPEN_HOSTS,
                                        max_request_body_size=MAX_MCP_BODY_BYTES)
    app.router.routes.append(Route(MCP_PATH, LazilyStarted(served, server.session_manager),
                                   include_in_schema=False))


__all__ = ["AUTH", "MAX_MCP_BODY_BYTES", "KeyVerifier", "LazilyStarted", "backend_for",
           "caller_scopes", "mount_mcp"]
