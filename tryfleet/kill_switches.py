"""Kill switches through the HTTP API, for admins (`Fleet.switches`): freeze or kill an
iteration, a sandbox, a suite, a tenant, a key, a host or everything; lift it; list them.

    fleet.switches.flip("tenant", "acme", "freeze", reason="incident 42")
    fleet.switches.list()                       # in force, with who flipped them, when, why
    fleet.switches.lift("tenant", "acme", reason="fixed")

A switch holds across restarts of the fleet until lifted. What it refuses raises `Frozen`,
whose message names the switch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .http import Api

LEVELS = ("iteration", "sandbox", "suite", "tenant", "key", "host", "everything")


class Switches:
    def __init__(self, api: Api) -> None:
        self._api = api

    @staticmethod
    def _body(level: str, target: str, tenant: str | None, reason: str,
              person: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"level": level, "target": target, "reason": reason}
        if tenant is not None:
            body["tenant"] = tenant
        if person:
            body["person"] = person
        return body

    def flip(self, level: str, target: str = "", strength: str = "freeze", *,
             reason: str = "", tenant: str | None = None,
             person: str | None = None) -> dict[str, Any]:
        """Freeze (admit nothing new) or kill (also destroy what runs) what (level, target)
        names; tenant qualifies an iteration id or a suite; person (user@host) is recorded
        beside the key. {"switch", "created", "queued_cancelled", "running_stopped",
        "sandboxes_closed", "key_revoked"}."""
        body = self._body(level, target, tenant, reason, person) | {"strength": strength}
        got: dict[str, Any] = self._api.json("POST", "/v1/switches", json=body,
                                             idempotent=True)
        return got

    def lift(self, level: str, target: str = "", *, reason: str = "",
             tenant: str | None = None, person: str | None = None) -> dict[str, Any]:
        """The switch on (level, target), lifted (NotFound when none is in force there)."""
        got: dict[str, Any] = self._api.json(
            "POST", "/v1/switches/lift", json=self._body(level, target, tenant, reason, person))
        return got

    def list(self, history: bool = False) -> list[dict[str, Any]]:
        """The switches in force, oldest first; history: every one, lifted too, newest first."""
        got = self._api.json("GET", "/v1/switches", params={"history": str(history).lower()})
        return list(got["items"])


__all__ = ["LEVELS", "Switches"]
