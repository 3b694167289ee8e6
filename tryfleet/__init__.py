"""tryfleet: throwaway micro-VMs for the try-until-it-works loops of AI-agent fleets.

    fleet = tryfleet.connect()
    for result in fleet.map([tryfleet.Iteration("base", ["pytest", "-q"])], suite="demo"):
        print(result.state, result.exit_code)

`connect()` finds the fleet `tryfleet up` started on this host (or starts one in this
process); `connect("http://HOST:8470", api_key=KEY)` (or TRYFLEET_URL and TRYFLEET_API_KEY)
reaches any fleet over its HTTP API. The client needs neither Ray nor libvirt.

Everything tryfleet raises is a tryfleet.TryfleetError; BadRequest (CannotPlace) when a request
can never succeed as given, NotFound, NoRoom, WaitTimeout, AccessDenied, PolicyDenied,
QuotaExceeded, InfrastructureError, FleetUnavailable.
"""

import os
from typing import Any

# Ray reads this when it is imported; every tryfleet cluster requires Ray's auth token.
os.environ.setdefault("RAY_AUTH_MODE", "token")

__version__ = "0.1.0"

# Each public name and the module it comes from, imported on first use: `import tryfleet` stays
# fast and imports neither Ray nor libvirt.
_WHERE = {
    "AccessDenied": "tryfleet.errors",
    "Attempt": "tryfleet.scheduler.records",
    "BadRequest": "tryfleet.errors",
    "CannotPlace": "tryfleet.errors",
    "ExecResult": "tryfleet.sandbox",
    "Fleet": "tryfleet.fleet",
    "FleetUnavailable": "tryfleet.errors",
    "Frozen": "tryfleet.errors",
    "InfrastructureError": "tryfleet.errors",
    "Iteration": "tryfleet.scheduler.records",
    "IterationDetail": "tryfleet.scheduler.records",
    "LiveOutput": "tryfleet.scheduler.records",
    "NoRoom": "tryfleet.errors",
    "NotFound": "tryfleet.errors",
    "PolicyDenied": "tryfleet.errors",
    "QuotaExceeded": "tryfleet.errors",
    "Result": "tryfleet.scheduler.records",
    "Sandbox": "tryfleet.sandbox",
    "TryfleetError": "tryfleet.errors",
    "WaitTimeout": "tryfleet.errors",
    "connect": "tryfleet.fleet",
}

__all__ = [
    "AccessDenied", "Attempt", "BadRequest", "CannotPlace", "ExecResult", "Fleet",
    "FleetUnavailable", "Frozen", "InfrastructureError", "Iteration", "IterationDetail",
    "LiveOutput", "NoRoom", "NotFound", "PolicyDenied", "QuotaExceeded", "Result", "Sandbox",
    "TryfleetError", "WaitTimeout", "__version__", "connect",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tryfleet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
