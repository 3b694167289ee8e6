"""The soak's chaos: a seeded plan of events, and a thread that carries it out.

An event fires at a random point of the run's progress (once `at_done` iterations are terminal,
as the ledger says), not at a wall-clock time: progress stops while the scheduler is down, so a
plan drawn this way spreads its kills over the work whatever the machine's speed, and a kill
lands while some work is queued, some placed and some running. What an event does is the
caller's: `actions` maps each kind to a function that performs it and returns what it did.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

POLL_S = 0.05
DISTINCT = frozenset({"remove"})  # kinds whose targets are never drawn twice (a host goes once)
WINDOW = (0.05, 0.85)  # events fire between these fractions of the work


@dataclass(frozen=True, slots=True)
class Event:
    at_done: int  # fires once this many iterations are terminal
    kind: str  # "scheduler", "node", "remove", "destroy"
    target: int  # which node actor or host, for the kinds that need one


def plan(seed: int, total: int, counts: Mapping[str, int],
         targets: Mapping[str, int] | None = None,
         points: Mapping[str, Sequence[int]] | None = None,
         window: tuple[float, float] = WINDOW) -> list[Event]:
    """counts[kind] events of each kind at random progress points within window; targets[kind]
    is how many targets a kind picks from (default 1). Every other event of a kind with
    points[kind] fires at one of those points instead (e.g. when a submit goes out). Sorted by
    when they fire; the same for the same arguments."""
    rng = random.Random(seed)
    lo, hi = int(total * window[0]), max(int(total * window[0]), int(total * window[1]))
    events = []
    for kind in sorted(counts):
        n, pool = counts[kind], (targets or {}).get(kind, 1)
        if kind in DISTINCT:
            if n > pool:
                raise ValueError(f"{n} {kind} events need {n} targets, there are {pool}")
            picks = rng.sample(range(pool), n)
        else:
            picks = [rng.randrange(pool) for _ in range(n)]
        near = [p for p in (points or {}).get(kind, ()) if lo <= p <= hi]
        events += [Event(rng.choice(near) if near and i % 2 else rng.randint(lo, hi), kind, t)
                   for i, t in enumerate(picks)]
    return sorted(events, key=lambda e: (e.at_done, e.kind, e.target))


class Chaos:
    """Runs the plan in a thread: waits for each event's progress point, then performs it in a
    thread of its own, so an action that waits (for a killed process to be back) holds up
    neither the plan nor the others: a node agent can die while the scheduler is down. A
    failed action is recorded with its error and the plan goes on."""

    def __init__(self, events: list[Event],
                 actions: Mapping[str, Callable[[Event], dict[str, Any] | None]],
                 progress: Callable[[], int]) -> None:
        self.events = events
        self.actions = actions
        self.progress = progress
        self.records: list[dict[str, Any]] = []  # one per event fired, filled in when done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="chaos", daemon=True)

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def finished(self) -> bool:
        """Every event fired and done."""
        return len(self.records) == len(self.events) and \
            all("done_at" in r for r in self.records)

    @property
    def last_at(self) -> float | None:
        """Wall time the last event that ran was done."""
        return max((r["done_at"] for r in self.records if "done_at" in r), default=None)

    def run(self) -> None:
        """Carry out the plan, then wait for the actions still running (the thread's body;
        callable directly)."""
        doing = []
        for ev in self.events:
            while (done := self.progress()) < ev.at_done:
                if self._stop.wait(POLL_S):
                    break
            if self._stop.is_set():
                break
            rec: dict[str, Any] = {"kind": ev.kind, "target": ev.target, "at_done": ev.at_done,
                                   "done_when_fired": done, "at": time.time()}
            self.records.append(rec)
            doing.append(threading.Thread(target=self._do, args=(ev, rec), daemon=True))
            doing[-1].start()
        for worker in doing:
            worker.join()

    def _do(self, ev: Event, rec: dict[str, Any]) -> None:
        try:
            rec.update(self.actions[ev.kind](ev) or {})
        except Exception as err:  # recorded: the report shows what could not be done
            rec["error"] = f"{type(err).__name__}: {err}"
        rec["done_at"] = time.time()


def count(records: list[dict[str, Any]], kind: str) -> int:
    """Events of kind that were carried out (not failed, not skipped)."""
    return sum(1 for r in records if r["kind"] == kind and "error" not in r
               and not r.get("skipped"))
