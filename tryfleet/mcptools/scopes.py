"""Which key scopes each tool needs, and an MCP server that shows a caller only the tools its
key may use and refuses the others. The scopes are the /v1 API's for the same operations: a
sandbox key uses sandboxes (and a read key may read their files and list them, as GET does);
a batch key submits and reads batches (a read key reads them); an admin key does everything."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, InputRequiredResult
from mcp_types import Tool as MCPTool

ADMIN = "admin"
TOOL_SCOPES: dict[str, frozenset[str]] = {
    "create_sandbox": frozenset({"sandbox"}),
    "run_command": frozenset({"sandbox"}),
    "write_file": frozenset({"sandbox"}),
    "read_file": frozenset({"sandbox", "read"}),
    "list_files": frozenset({"sandbox", "read"}),
    "destroy_sandbox": frozenset({"sandbox"}),
    "submit_batch": frozenset({"batch"}),
    "batch_status": frozenset({"batch", "read"}),
    "batch_results": frozenset({"batch", "read"}),
}


def may_use(tool: str, held: Iterable[str]) -> bool:
    """Whether a key holding `held` may use `tool`: one of the scopes it needs, or admin. A
    tool with no entry is nobody's."""
    have = set(held)
    return ADMIN in have or bool(TOOL_SCOPES.get(tool, frozenset()) & have)


def lacking(tool: str) -> str:
    """The refusal of a tool to a key without its scope."""
    names = " or ".join(f"`{s}`" for s in sorted(TOOL_SCOPES.get(tool, ())))
    return (f"tool {tool!r} needs a key with the {names or '`admin`'} scope, which this key "
            f"lacks [forbidden]. What to do: use a key that has it (an admin makes one: "
            f"`tryfleet key create --tenant T --scope SCOPE`).")


class ScopedServer(MCPServer[Any]):
    """An MCPServer whose tools/list holds only the tools the caller's key may use, and whose
    tools/call refuses the others (a tool error naming the scope). `scopes_now` gives the
    caller's scopes where the request is handled (from its access token over HTTP; the one
    key's over stdio)."""

    def __init__(self, scopes_now: Callable[[], frozenset[str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scopes_now = scopes_now

    async def list_tools(self) -> list[MCPTool]:
        held = self.scopes_now()
        return [t for t in await super().list_tools() if may_use(t.name, held)]

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[Any, Any] | None = None
                        ) -> CallToolResult | InputRequiredResult:
        if name in TOOL_SCOPES and not may_use(name, self.scopes_now()):
            raise ToolError(lacking(name))
        return await super().call_tool(name, arguments, context)


__all__ = ["TOOL_SCOPES", "ScopedServer", "lacking", "may_use"]
