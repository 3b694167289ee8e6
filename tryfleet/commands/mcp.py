"""`tryfleet mcp`: tryfleet's MCP tools over stdio, for an agent's MCP client on this machine
(it starts this command and speaks JSON-RPC on its stdin and stdout; nothing else is written
there). The tools act with one key through the fleet's HTTP API: --url and --api-key, else
TRYFLEET_URL and TRYFLEET_API_KEY, else the fleet `tryfleet up` started here with its local
admin key."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from tryfleet.errors import TryfleetError

from .common import connect, error, failed

MCP_HINT = "pip install 'tryfleet[mcp]'"


def mcp(args: argparse.Namespace, data_dir: Path) -> int:
    if importlib.util.find_spec("mcp") is None:
        return error(f"`tryfleet mcp` needs the `mcp` package, which is not installed: "
                     f"{MCP_HINT}")
    from tryfleet.mcptools.stdio import serve

    try:
        fleet = connect(args, data_dir)
    except TryfleetError as err:
        return failed(err)
    with fleet:
        serve(fleet)
    return 0


__all__ = ["mcp"]
