"""The core's handling of kill switches (switches.py says what each level and strength means),
a part of `Core` kept in a module of its own. Pure: no Ray, SQLite or clocks.

Queued iterations a switch covers are `held`: kept in the core's state, out of the backlog, so
admission never sees them, and back in the backlog in their old place once nothing covers
them. A drained (switched) host is offered to placement as draining: it takes nothing new.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from tryfleet.wire import Failure, Outcome
from tryfleet.wire import State as Ended

from .events import (
    Action,
    CloseSandbox,
    Finish,
    MarkCancelled,
    StopEverywhere,
    StopOnHost,
    SwitchOff,
    SwitchOn,
)
from .placement import HostView
from .switches import Level, Switch

if TYPE_CHECKING:
    from .core import SchedulerState, Work


class Switching:
    state: SchedulerState

    if TYPE_CHECKING:  # Core's own transitions
        def _end(self, w: Work) -> None: ...

        def _settle(self, todo: Iterable[tuple[Work, Ended, Failure | None, str | None,
                                               Outcome | None]]) -> list[Action]: ...

    # ---- what a switch covers --------------------------------------------------------------
    def _over(self, w: Work) -> Switch | None:
        r = w.row
        return self.state.switches.over_work(r.tenant, r.suite_key, r.key, r.key_id)

    def _hold_or_queue(self, w: Work) -> None:
        """w waits: in the backlog, or held when a switch covers it."""
        if self._over(w) is not None:
            self.state.held.add(w.row.key)
        else:
            self.state.backlog.add(w.cand)

    def _views(self) -> dict[str, HostView]:
        """The hosts as placement sees them: with what is reserved, drained ones draining."""
        s = self.state
        drained = s.switches.drained()
        views = {n: s.reservations.apply(v) for n, v in s.hosts.items()}
        for name in drained & views.keys():
            views[name] = replace(views[name], draining=True)
        return views

    # ---- flips and lifts -------------------------------------------------------------------
    def _switch_on(self, ev: SwitchOn) -> list[Action]:
        s = self.state
        s.switches.add(ev.switch)
        for c in list(s.backlog):
            w = s.work[c.id]
            if self._over(w) is not None:
                s.backlog.discard(c.id)
                s.held.add(c.id)
        return self._kill(ev.switch) if ev.switch.killing else []

    def _switch_off(self, ev: SwitchOff) -> list[Action]:
        s = self.state
        s.switches.remove(ev.level, ev.target)
        for key in list(s.held):
            w = s.work.get(key)
            if w is None or w.host is not None:
                s.held.discard(key)
            elif self._over(w) is None:
                s.held.discard(key)
                s.backlog.add(w.cand)
        return []

    # ---- kills -----------------------------------------------------------------------------
    def _kill(self, sw: Switch) -> list[Action]:
        """Destroy what sw covers now: its iterations cancelled (queued ones end, running ones
        are stopped), its sandboxes closed; a host's running iterations are stopped and
        retried elsewhere."""
        s = self.state
        why = f"killed by switch #{sw.id} ({sw.what()}): {sw.reason or 'no reason given'}"
        if sw.level is Level.HOST:
            actions = self._kill_host(sw.target, why)
        else:
            actions = self._stop_work([w for w in s.work.values()
                                       if self._over(w) is sw], why)
        for lease_id, lease in list(s.leases.items()):
            covered = lease.host == sw.target if sw.level is Level.HOST else \
                s.switches.over_sandbox(lease.tenant, lease.key_id, lease_id) is sw
            if covered:
                del s.leases[lease_id]
                s.reservations.unreserve(lease_id)
                actions.append(CloseSandbox(lease_id, lease.host, why))
        if sw.level is Level.EVERYTHING:
            actions.append(StopEverywhere())
        return actions

    def _stop_work(self, works: list[Work], why: str) -> list[Action]:
        actions: list[Action] = []
        flying: list[Work] = []
        for w in works:
            if w.host is None:
                actions.append(Finish(w.row.key, w.attempt, Ended.CANCELLED, why, queued=True))
                self._end(w)
            elif not w.cancel:
                w.cancel = True
                flying.append(w)
        if flying:
            actions.append(MarkCancelled(tuple(w.row.key for w in flying), why))
            by_host: dict[str, list[tuple[str, int]]] = defaultdict(list)
            for w in flying:
                by_host[w.host or ""].append((w.row.key, w.attempt))
            actions += [StopOnHost(h, tuple(keys)) for h, keys in by_host.items()]
        return actions

    def _kill_host(self, host: str, why: str) -> list[Action]:
        """The host's attempts end as lost (retried elsewhere, within their budget), and the
        host is told to stop them."""
        on = [w for w in self.state.work.values() if w.host == host]
        stop = tuple((w.row.key, w.attempt) for w in on)
        actions = self._settle([(w, Ended.INFRA_ERROR, Failure.HOST_LOST, f"{host}: {why}",
                                 None) for w in on])
        if stop:
            actions.append(StopOnHost(host, stop, settled=True))
        return actions


__all__ = ["Switching"]
