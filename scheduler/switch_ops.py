"""Kill switches from the scheduler's API: the target an admin names resolved to the core's key
(an iteration or a suite of a tenant, a sandbox, a host), the flip or lift recorded, then
enforced. Unknown targets are NotFound; an iteration id or suite several tenants use, without
a tenant, is AmbiguousId (as for cancel)."""

from __future__ import annotations

from typing import Any

from tryfleet.errors import BadRequest, NotFound

from . import core as c
from .engine import Engine
from .ledger_reads import AmbiguousId
from .records import check_name, qualified
from .switches import Level, Strength

MAX_REASON = 1000


def level_of(value: str) -> Level:
    try:
        return Level(value)
    except ValueError:
        raise BadRequest(f"level must be one of {', '.join(lv.value for lv in Level)}, got "
                         f"{value!r}") from None


def strength_of(value: str) -> Strength:
    try:
        return Strength(value)
    except ValueError:
        raise BadRequest(f"strength must be freeze or kill, got {value!r}") from None


class SwitchOps:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def target(self, level: Level, name: str, tenant: str | None, must_exist: bool) -> str:
        """The core's key of what (level, name) names; tenant qualifies an iteration or a
        suite (None: the one tenant that has it)."""
        e = self.engine
        if level is Level.EVERYTHING:
            return ""
        if not isinstance(name, str) or not name:
            raise BadRequest(f"a {level.value} switch needs a target")
        if level is Level.ITERATION:
            row = e.ledger.get_row(name, tenant)
            if row is None:
                raise NotFound(f"no iteration {name!r}" + (f" of tenant {tenant!r}"
                                                            if tenant else ""))
            return row.key
        if level is Level.SUITE:
            owners = [tenant] if tenant is not None else e.ledger.suite_tenants(name)
            if len(owners) > 1:
                raise AmbiguousId(f"suite {name!r} exists for several tenants "
                                  f"({', '.join(owners[:10])}): name the tenant")
            if not owners or e.ledger.suite(owners[0], name) is None:
                raise NotFound(f"no suite {name!r}" + (f" of tenant {tenant!r}"
                                                        if tenant else ""))
            return qualified(owners[0], name)
        if level is Level.SANDBOX and must_exist:
            e.sandboxes.get(name)  # NotFound
        if level is Level.HOST and must_exist and \
                name not in {h.host for h in e.hosts.describe()}:
            raise NotFound(f"no host {name!r} in the fleet")
        if level is Level.TENANT:
            check_name("tenant", name)
        return name

    def flip(self, level: str, name: str, strength: str, reason: str, by: str,
             tenant: str | None = None) -> dict[str, Any]:
        """{"switch": the switch in force, "created": whether it is new, and what a kill
        did now: "queued_cancelled", "running_stopped", "sandboxes_closed"}."""
        lv, st = level_of(level), strength_of(strength)
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise BadRequest(f"reason must be text of at most {MAX_REASON} characters")
        key = self.target(lv, name, tenant, must_exist=True)
        switch, new, actions = self.engine.flip(lv, key, st, reason, by)
        return {"switch": switch.to_json(), "created": new, **_done(actions)}

    def lift(self, level: str, name: str, by: str, reason: str = "",
             tenant: str | None = None) -> dict[str, Any]:
        lv = level_of(level)
        key = self.target(lv, name, tenant, must_exist=False)
        return self.engine.lift(lv, key, by, reason).to_json()

    def list(self, history: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
        book = self.engine.switches
        return [s.to_json() for s in (book.history(limit) if history else book.active())]


def _done(actions: list[c.Action]) -> dict[str, int]:
    return {"queued_cancelled": sum(1 for a in actions if isinstance(a, c.Finish) and a.queued),
            "running_stopped": sum(len(a.attempts) for a in actions
                                   if isinstance(a, c.StopOnHost)),
            "sandboxes_closed": sum(1 for a in actions if isinstance(a, c.CloseSandbox))}


__all__ = ["SwitchOps", "level_of", "strength_of"]
