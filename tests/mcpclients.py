"""The official `mcp` SDK's own clients, as an agent's MCP client uses them: over streamable
HTTP to the gateway's /mcp with a key as a Bearer header, and over stdio to `tryfleet mcp`
started as a subprocess (this checkout's code, its key and URL in the environment)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).parents[1]  # this checkout
T = TypeVar("T")


def over_http(url: str, key: str | None, mode: str = "auto") -> Client:
    """A client of the gateway at url (its /mcp), sending key as a Bearer token (none: no
    Authorization header)."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60, read=300))
    return Client(streamable_http_client(url.rstrip("/") + "/mcp", http_client=http), mode=mode)


def over_stdio(url: str, key: str) -> Client:
    """A client of `tryfleet mcp` run from this checkout, with TRYFLEET_URL and
    TRYFLEET_API_KEY set (as an agent's MCP client config gives them)."""
    env = {"TRYFLEET_URL": url, "TRYFLEET_API_KEY": key, "PYTHONPATH": str(ROOT),
           "TRYFLEET_DATA": "/nonexistent/tryfleet"}  # no fleet of this host's to fall back on
    return Client(StdioServerParameters(command=sys.executable,
                                        args=["-m", "tryfleet.cli", "mcp"], env=env))


def using(client: Client, work: Callable[[Client], Awaitable[T]], timeout_s: float = 300
          ) -> T:
    """Run work(client) with the client connected, in an event loop of its own."""
    async def main() -> T:
        async with asyncio.timeout(timeout_s), client as connected:
            return await work(connected)

    return asyncio.run(main())


async def tool(client: Client, name: str, progress: list[Any] | None = None,
               **args: Any) -> Any:
    """The tool's result: its structured content; AssertionError with its text when it is an
    error."""
    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if progress is not None:
            progress.append((value, message))

    result = await client.call_tool(name, args, progress_callback=on_progress)
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def refusal(client: Client, name: str, **args: Any) -> str:
    """The text of the tool error a call answers (AssertionError when it succeeds)."""
    result = await client.call_tool(name, args)
    assert result.is_error, result.structured_content
    text: str = result.content[0].text
    return text


async def tool_names(client: Client) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


__all__ = ["over_http", "over_stdio", "refusal", "tool", "tool_names", "using"]
