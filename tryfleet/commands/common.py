"""What the commands share: error output and opening this host's node agent."""

from __future__ import annotations

import sys
from pathlib import Path

from tryfleet.errors import BadRequest, NotFound, TryfleetError
from tryfleet.images import ImageError
from tryfleet.nodeagent import HypervisorUnavailable, NodeAgent, NodeConfig

EXIT_INFRA = 125  # tryfleet itself could not do what was asked
EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2  # bad flags or a request that can never succeed as given


def error(message: str, code: int = EXIT_INFRA) -> int:
    print(f"tryfleet: error: {message}", file=sys.stderr, flush=True)
    return code


def failed(err: TryfleetError) -> int:
    """Report one of tryfleet's errors: a bad request or an unknown id exits 2, the rest 125."""
    return error(str(err), EXIT_USAGE if isinstance(err, (BadRequest, NotFound)) else EXIT_INFRA)


def open_node(data_dir: Path, uri: str, reap: bool = True) -> NodeAgent:
    """Raises HypervisorUnavailable with the command that starts libvirtd."""
    return NodeAgent(NodeConfig(data_dir=data_dir, uri=uri), reap_on_start=reap)


__all__ = ["EXIT_INFRA", "EXIT_INTERRUPTED", "EXIT_TIMEOUT", "EXIT_USAGE", "HypervisorUnavailable",
           "ImageError", "error", "failed", "open_node"]
