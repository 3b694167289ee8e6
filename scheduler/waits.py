"""Why queued iterations wait, counted by a bounded set of reasons: the `reason` label of the
metric tryfleet_admission_waiting_iterations. Pure: no ray, sqlite or prometheus_client.

    frozen      a kill switch holds it (its tenant, suite, key, id, or everything)
    limit       a named shared-resource limit (`ci-db=8`) is full
    suite_cap   its suite runs as many as its cap allows
    tenant_cap  its tenant runs as many as its cap allows
    pressure    every host is under pressure (PSI over the high mark) or drained
    no_room     none of the above: waiting for a host with room (or for the next pass)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .admission import LIMIT, SUITE_CAP, TENANT_CAP, blocked_by

if TYPE_CHECKING:
    from .core import SchedulerState

FROZEN, PRESSURE, NO_ROOM = "frozen", "pressure", "no_room"
REASONS = (FROZEN, LIMIT, SUITE_CAP, TENANT_CAP, PRESSURE, NO_ROOM)


def waiting(state: SchedulerState) -> dict[str, int]:
    """How many queued iterations wait for each reason (every reason present, 0 or more)."""
    out = dict.fromkeys(REASONS, 0)
    # drained by a host switch: the core's state keeps those in its switches, not its views
    drained = state.switches.drained()
    all_pressured = bool(state.hosts) and all(
        v.pressured or v.draining or name in drained for name, v in state.hosts.items())
    for w in state.work.values():
        if w.host is not None:
            continue
        if w.row.key in state.held:
            reason = FROZEN
        elif (why := blocked_by(w.cand, state.usage, state.policy)) is not None:
            reason = why[0]
        else:
            reason = PRESSURE if all_pressured else NO_ROOM
        out[reason] += 1
    return out


__all__ = ["FROZEN", "NO_ROOM", "PRESSURE", "REASONS", "waiting"]
