"""tryfleet: throwaway micro-VMs for the try-until-it-works loops of AI-agent fleets.

    fleet = tryfleet.connect()
    for result in fleet.map([tryfleet.Iteration("base", ["pytest", "-q"])], suite="demo"):
        print(result.state, result.exit_code)
"""

import os
from typing import Any

# Ray reads this when it is imported; every tryfleet cluster requires Ray's auth token.
os.environ.setdefault("RAY_AUTH_MODE", "token")

__version__ = "0.1.0"
__all__ = ["Fleet", "Iteration", "Result", "Sandbox", "__version__", "connect"]


def __getattr__(name: str) -> Any:
    # Importing Ray takes a second or two: only pay for it when the SDK is used.
    if name in ("Iteration", "Result"):
        from tryfleet.scheduler import records

        return getattr(records, name)
    if name in ("Fleet", "Sandbox", "connect"):
        from . import fleet

        return getattr(fleet, name)
    raise AttributeError(f"module 'tryfleet' has no attribute {name!r}")
