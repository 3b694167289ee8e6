"""tryfleet's MCP server: the tools an agent uses (server.py), what they act through
(backend.py: /v1's operations), which key scopes each needs (scopes.py), and the backend over
the HTTP API that `tryfleet mcp` serves over stdio (sdk.py, stdio.py). The gateway serves the
same tools at /mcp over its own route functions (tryfleet.gateway.mcp_mount).

Importing this package imports nothing; its modules need the `mcp` package
(`pip install 'tryfleet[mcp]'`), which the light install lacks."""
