"""One error root for everything tryfleet raises. Each subclass also inherits the builtin it
resembles, so `except ValueError` or `except TimeoutError` keep working for callers who know
nothing of tryfleet.

Two families matter to callers and to the scheduler's retry policy:
- BadRequest: the request can never succeed as given (a field out of range, an unknown image,
  a size no host has). Retrying it is pointless; the message says what to change.
- InfrastructureError: tryfleet could not do it this time (a VM that did not boot, a guest
  protocol error, a host lost, an image build that failed on a network error). Retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class TryfleetError(Exception):
    """Root of every error tryfleet raises. One that came back from the HTTP API also carries
    the answer's status, its problem (RFC 9457 problem+json, as a dict) and the id of the
    request (X-Request-Id), which names it in the gateway's logs and the ledger."""

    status: int | None = None
    problem: Mapping[str, Any] | None = None
    request_id: str | None = None


class BadRequest(TryfleetError, ValueError):
    """A request that can never be honoured as given; the message names the field and why."""


class InfrastructureError(TryfleetError, RuntimeError):
    """tryfleet could not do what was asked this time; trying again may work."""


class CannotPlace(BadRequest):
    """No host of the fleet could ever take this request as the fleet is (size, image)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class NoRoom(TryfleetError, TimeoutError):
    """The request fits the fleet, but no room came free before the wait ended."""


class WaitTimeout(TryfleetError, TimeoutError):
    """What was waited for (iterations to end) had not happened when the wait's deadline passed;
    it goes on in the fleet."""


class NotFound(TryfleetError, LookupError):
    """No such iteration, suite or sandbox (or not one the caller may see)."""


class QuotaExceeded(TryfleetError):
    """A tenant's quota would be passed (sandboxes, vCPUs or memory at once); the message
    names the limit and its value. Trying again once something ended may work."""

    def __init__(self, message: str, limit: str = "", value: int | float = 0) -> None:
        # Defaults, so that it unpickles whole (pickle calls it with the message alone, then
        # restores the attributes): it crosses Ray from the scheduler to the gateway.
        super().__init__(message)
        self.limit, self.value = limit, value


class PolicyDenied(TryfleetError, PermissionError):
    """What the tenant's policy does not allow; the message names the rule."""

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule


class Frozen(PolicyDenied):
    """A kill switch an admin flipped covers what was asked (a freeze or a kill of its
    iteration, sandbox, suite, tenant, key, host, or everything): nothing new starts under it
    until a human lifts it. The message names the switch, who flipped it, when and why;
    `switch` holds it as JSON (id, level, target, strength, reason, flipped_by, flipped_at)."""

    def __init__(self, message: str, switch: Mapping[str, Any] | None = None) -> None:
        # Defaults, so that it unpickles whole: it crosses Ray from the scheduler.
        self.switch = dict(switch or {})
        super().__init__(message, f"switch:{self.switch.get('id', '?')}")


class FleetUnavailable(TryfleetError, ConnectionError):
    """The fleet could not be started, reached or stopped; the message says what to do."""


class AccessDenied(TryfleetError, PermissionError):
    """The API refused the key: none was given, or it is unknown, revoked or expired
    (`status` 401), or it lacks the scope the request needs (403, the scopes in `scopes`)."""

    def __init__(self, message: str, scopes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.scopes = scopes


__all__ = ["AccessDenied", "BadRequest", "CannotPlace", "FleetUnavailable", "Frozen",
           "InfrastructureError", "NoRoom", "NotFound", "PolicyDenied", "QuotaExceeded",
           "TryfleetError", "WaitTimeout"]
