"""The backlog: queued iterations held in memory between scheduling passes, in admission order.
Pure: no ray, libvirt or prometheus_client.

Each suite has its own line, in strict priority then submission order (seq), as admission takes
them. A pass looks only at the head of each line, as many as could possibly start now, so its
cost follows free capacity rather than the length of the queue. Removal is lazy: a removed
entry is skipped (and dropped once it reaches the front); the lines are rebuilt when dead
entries pile up.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from .admission import Candidate

_Entry = tuple[int, int, str]  # (-priority, seq, id)
COMPACT_SLACK = 1024


class Backlog:
    def __init__(self) -> None:
        self._live: dict[str, Candidate] = {}
        self._lines: dict[str, list[_Entry]] = {}
        self._entries = 0

    def add(self, c: Candidate) -> bool:
        """False (and nothing changes) when c's id is already queued here."""
        if c.id in self._live:
            return False
        self._live[c.id] = c
        line = self._lines.setdefault(c.suite, [])
        entry = (-c.priority, c.seq, c.id)
        if not line or line[-1] < entry:
            line.append(entry)  # the common case: submitted in order
        else:
            bisect.insort(line, entry)
        self._entries += 1
        return True

    def discard(self, iid: str) -> Candidate | None:
        """Take iid out (it was placed, cancelled, abandoned); None if it was not here."""
        c = self._live.pop(iid, None)
        if c is not None and self._entries > 2 * len(self._live) + COMPACT_SLACK:
            self._compact()
        return c

    def heads(self, k: int) -> list[Candidate]:
        """Up to k queued iterations from the front of each suite's line, in line order."""
        out: list[Candidate] = []
        for suite in list(self._lines):
            line = self._lines[suite]
            front = 0
            while front < len(line) and line[front][2] not in self._live:
                front += 1
            if front:
                del line[:front]
                self._entries -= front
            if not line:
                del self._lines[suite]
                continue
            seen: set[str] = set()
            for _, _, iid in line:
                if len(seen) >= k:
                    break
                c = self._live.get(iid)
                if c is not None and c.suite == suite and iid not in seen:
                    seen.add(iid)
                    out.append(c)
        return out

    def _compact(self) -> None:
        lines: dict[str, list[_Entry]] = {}
        for c in self._live.values():
            lines.setdefault(c.suite, []).append((-c.priority, c.seq, c.id))
        for line in lines.values():
            line.sort()
        self._lines = lines
        self._entries = len(self._live)

    def suites(self) -> set[str]:
        """The suites with something queued (or with removed entries not yet dropped)."""
        return set(self._lines)

    def get(self, iid: str) -> Candidate | None:
        return self._live.get(iid)

    def __contains__(self, iid: object) -> bool:
        return iid in self._live

    def __iter__(self) -> Iterator[Candidate]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)
