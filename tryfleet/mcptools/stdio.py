"""`tryfleet mcp`: the MCP server over stdio, for an agent on this machine whose MCP client
starts the command. Its tools act with one key through the fleet's HTTP API (the SDK's client),
and it lists only the tools that key's scopes allow."""

from __future__ import annotations

from tryfleet.fleet import Fleet

from .scopes import ScopedServer
from .sdk import SdkBackend
from .server import build_server


def stdio_server(fleet: Fleet) -> ScopedServer:
    """The server over `fleet` (connected, with its key)."""
    scopes = frozenset(str(s) for s in fleet.me().get("scopes") or ())
    return build_server(lambda ctx: SdkBackend(fleet), lambda: scopes)


def serve(fleet: Fleet) -> None:
    """Serve over this process's stdin and stdout until the client closes them."""
    stdio_server(fleet).run("stdio")


__all__ = ["serve", "stdio_server"]
