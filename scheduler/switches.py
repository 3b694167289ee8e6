"""Kill switches: what an admin flips to stop work at one level, and what each one covers.
Pure: no Ray, SQLite or clocks (switch_book.py keeps them in the ledger; core.py enforces them).

Levels: one iteration, one sandbox, a suite, a tenant, an API key, a host, everything. Two
strengths:
- freeze: nothing new is admitted under it. Submissions and sandbox openings it covers are
  refused (`Frozen`, naming the switch); iterations it covers that were already queued stay
  queued, not started, until it is lifted; a frozen host (drained) takes no new iteration or
  sandbox. What already runs goes on, and so do commands in open sandboxes.
- kill: a freeze that also destroys what it covers now: queued iterations are cancelled,
  running ones stopped (on a killed host they are stopped and retried elsewhere, the host not
  being their fault), sandboxes closed; with `everything`, warm pools are emptied too.

A switch is durable: it holds across restarts of the scheduler and the gateway until a human
lifts it (a kill is applied again at a restart to whatever it covers that is still live).

Targets are the scheduler's keys: an iteration's and a suite's are qualified by their tenant
(`tenant/id`, records.qualified); a sandbox's is its id, a key's its id, a host's its name;
`everything` has the empty target.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tryfleet.errors import Frozen


class Level(enum.StrEnum):
    ITERATION = "iteration"
    SANDBOX = "sandbox"
    SUITE = "suite"
    TENANT = "tenant"
    KEY = "key"
    HOST = "host"
    EVERYTHING = "everything"


class Strength(enum.StrEnum):
    FREEZE = "freeze"  # admit nothing new; what runs goes on
    KILL = "kill"  # admit nothing new and destroy what runs now


@dataclass(frozen=True, slots=True)
class Switch:
    id: int
    level: Level
    target: str  # the scheduler's key of what it covers ("" for everything)
    strength: Strength
    reason: str
    flipped_by: str  # "key:<id>", with the person at the CLI: "key:<id> cli:<user>@<host>"
    flipped_at: float  # seconds since the epoch
    lifted_by: str | None = None
    lifted_at: float | None = None
    lift_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.lifted_at is None

    @property
    def killing(self) -> bool:
        return self.strength is Strength.KILL

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "level": self.level.value, "strength": self.strength.value,
                "active": self.active}

    def what(self) -> str:
        return "everything" if self.level is Level.EVERYTHING \
            else f"{self.level.value} {self.target}"

    def explain(self) -> str:
        """One sentence that names the switch: what, since when, by whom, why, how to lift."""
        state = "killed" if self.killing else "frozen"
        flag = "--all" if self.level is Level.EVERYTHING else \
            f"--{self.level.value} {self.target.split('/', 1)[-1]}"
        return (f"{self.what()} is {state} by switch #{self.id}, flipped by {self.flipped_by} "
                f"at {iso(self.flipped_at)}: {self.reason or 'no reason given'}; an admin lifts "
                f"it with `tryfleet thaw {flag}`")

    def refusal(self, asked: str) -> Frozen:
        """The error for `asked` (what was refused, e.g. "opening a sandbox of tenant acme")."""
        return Frozen(f"{asked} is refused: {self.explain()}", self.to_json())


def iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def switch_of(data: Mapping[str, Any]) -> Switch:
    """A Switch from its to_json() (or a ledger row as a mapping)."""
    return Switch(int(data["id"]), Level(data["level"]), str(data["target"]),
                  Strength(data["strength"]), str(data["reason"]), str(data["flipped_by"]),
                  float(data["flipped_at"]), data.get("lifted_by"), data.get("lifted_at"),
                  data.get("lift_reason"))


class Switches:
    """The switches in force, by (level, target): at most one per target."""

    def __init__(self, switches: Iterable[Switch] = ()) -> None:
        self._on: dict[tuple[Level, str], Switch] = {}
        for s in switches:
            self.add(s)

    def add(self, s: Switch) -> Switch | None:
        """s in force (replacing the one it supersedes, returned)."""
        old = self._on.get((s.level, s.target))
        self._on[(s.level, s.target)] = s
        return old

    def remove(self, level: Level, target: str) -> Switch | None:
        return self._on.pop((level, target), None)

    def get(self, level: Level, target: str) -> Switch | None:
        return self._on.get((level, target))

    def __iter__(self) -> Iterator[Switch]:
        return iter(list(self._on.values()))

    def __len__(self) -> int:
        return len(self._on)

    def _first(self, *keys: tuple[Level, str]) -> Switch | None:
        """The switch in force over the first key that has one, kills before freezes."""
        found = [s for k in keys if (s := self._on.get(k)) is not None]
        return next((s for s in found if s.killing), found[0] if found else None)

    def over_work(self, tenant: str, suite_key: str, iteration_key: str,
                  key_id: str = "") -> Switch | None:
        """The switch (if any) that covers an iteration: its own, its suite's, its tenant's,
        the key's that submitted it, or everything's."""
        if not self._on:
            return None
        keys = [(Level.ITERATION, iteration_key), (Level.SUITE, suite_key),
                (Level.TENANT, tenant), (Level.EVERYTHING, "")]
        if key_id:
            keys.insert(3, (Level.KEY, key_id))
        return self._first(*keys)

    def over_sandbox(self, tenant: str, key_id: str = "", sandbox: str = "") -> Switch | None:
        """The switch (if any) that covers a sandbox (or its opening, sandbox ""): its own,
        its tenant's, its key's, or everything's."""
        if not self._on:
            return None
        keys = [(Level.TENANT, tenant), (Level.EVERYTHING, "")]
        if sandbox:
            keys.insert(0, (Level.SANDBOX, sandbox))
        if key_id:
            keys.insert(-1, (Level.KEY, key_id))
        return self._first(*keys)

    def drained(self) -> frozenset[str]:
        """Hosts under a switch: they take nothing new."""
        return frozenset(t for (level, t) in self._on if level is Level.HOST)


__all__ = ["Frozen", "Level", "Strength", "Switch", "Switches", "iso", "switch_of"]
