"""What the commands share: exit codes, error output, reaching the fleet's API, and opening
this host's node agent (the fleet side, imported only then)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tryfleet import local
from tryfleet.errors import (
    AccessDenied,
    BadRequest,
    FleetUnavailable,
    NotFound,
    PolicyDenied,
    TryfleetError,
)

if TYPE_CHECKING:
    from tryfleet.fleet import Fleet
    from tryfleet.nodeagent import NodeAgent

EXIT_INFRA = 125  # tryfleet itself could not do what was asked
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2  # bad flags or a request that can never succeed as given
FLEET_DOWN = ("no tryfleet fleet is running here: start one with `tryfleet up`, or name one "
              "with --url (or TRYFLEET_URL)")


def error(message: str, code: int = EXIT_INFRA) -> int:
    print(f"tryfleet: error: {message}", file=sys.stderr, flush=True)
    return code


def failed(err: TryfleetError) -> int:
    """Report one of tryfleet's errors: a request that can never succeed as given (bad, an
    unknown id, not allowed for this key) exits 2, the rest 125."""
    usage = (BadRequest, NotFound, AccessDenied, PolicyDenied)
    return error(str(err), EXIT_USAGE if isinstance(err, usage) else EXIT_INFRA)


def api_url(args: argparse.Namespace, data_dir: Path) -> str | None:
    """The API the command should use: --url, $TRYFLEET_URL, or this host's fleet's."""
    return getattr(args, "url", None) or os.environ.get("TRYFLEET_URL") or \
        local.api_url(data_dir)


def connect(args: argparse.Namespace, data_dir: Path, reconnect_s: float = 300.0) -> Fleet:
    """The fleet of --url/--api-key (or their variables), else the one `tryfleet up` started
    here with its local admin key; never an embedded one: the CLI does not start a fleet by
    accident."""
    from tryfleet.fleet import connect as connect_fleet

    url = api_url(args, data_dir)
    if url is None:
        raise FleetUnavailable(FLEET_DOWN)
    return connect_fleet(url, getattr(args, "api_key", None), data_dir=data_dir,
                         reconnect_s=reconnect_s)


def open_node(data_dir: Path, uri: str, reap: bool = True) -> NodeAgent:
    """Raises HypervisorUnavailable with the command that starts libvirtd."""
    from tryfleet.nodeagent import NodeAgent, NodeConfig

    return NodeAgent(NodeConfig(data_dir=data_dir, uri=uri), reap_on_start=reap)


__all__ = ["EXIT_INFRA", "EXIT_INTERRUPTED", "EXIT_TIMEOUT", "EXIT_USAGE", "FLEET_DOWN",
           "api_url", "connect", "error", "failed", "open_node"]
