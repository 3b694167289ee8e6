"""Checking the trail: every record's hash, its place in the chain, and the signed checkpoints.

A record's hash covers its seq, so a record keeps the number it was written under whatever
row it is moved to: the walk learns each row's original seq (its own, the one its neighbours
imply, or a nearby one its hash fits), and from those tells the kinds of tampering apart:

- edited: its content no longer matches its hash (under any seq near its own);
- replaced: its hash was recomputed after an edit, so the next record no longer commits to it;
- removed: an original seq that no row holds (a gap, or rows renumbered to hide one);
- moved (reordered): a record stored after one that was written after it;
- repeated: a second row claiming a seq already seen (inserted or copied);
- cut off: the chain ends before a signed checkpoint's seq, or the records at a checkpointed
  seq were written after the checkpoint (cut off, then appended to again);
- rewritten: the hash at a checkpointed seq differs from the signed one (the chain was rebuilt
  with recomputed hashes: somewhere after the previous matching checkpoint);
- a checkpoint whose signature does not check out against audit.pub (forged, or another key).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .checkpoints import AuditPaths, Checkpoint, load_public_key, read_lines
from .record import GENESIS, chain_hash, content
from .store import first_at_or_after, open_read

PAGE = 20_000
SEARCH = 64  # how far from its stored seq a moved record's original seq is looked for
MAX_SEARCHES = 200  # rows searched that way; past it, an unmatched row is simply "edited"
MAX_PROBLEMS = 100
GRACE_S = 60.0  # a chain this old with no checkpoint had its checkpoints removed: every
# writer signs its head within seconds (Audit's checkpoint_s) of its first record


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # edited replaced removed moved repeated cut-off rewritten bad-signature ...
    seq: int | None
    message: str


@dataclass(frozen=True, slots=True)
class Report:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    checkpoints: int
    last_checkpoint_seq: int | None
    problems: tuple[Problem, ...]
    more_problems: int  # past MAX_PROBLEMS, counted only
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "records": self.records, "head_seq": self.head_seq,
                "head_hash": self.head_hash, "checkpoints": self.checkpoints,
                "last_checkpoint_seq": self.last_checkpoint_seq,
                "problems": [{"kind": p.kind, "seq": p.seq, "message": p.message}
                             for p in self.problems],
                "more_problems": self.more_problems, "elapsed_s": round(self.elapsed_s, 3)}

    def summary(self) -> str:
        if not self.ok:
            n = len(self.problems) + self.more_problems
            return f"the audit trail is NOT intact: {n} problem{'s' * (n != 1)}"
        n = self.checkpoints
        cp = "no checkpoint yet" if self.last_checkpoint_seq is None else (
            f"{n} signed checkpoint{'s' * (n != 1)}, the last at seq "
            f"{self.last_checkpoint_seq}")
        return (f"the audit trail is intact: {self.records} records, head seq {self.head_seq} "
                f"({self.head_hash[:16]}), {cp}")


def when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _name(seqs: tuple[int, int]) -> str:
    a, b = seqs
    return f"record {a} was" if a == b else f"records {a}-{b} were"


def _written_after(a: int, b: int) -> str:
    now = f"the record now at seq {a} was" if a == b else f"the records now at seq {a}-{b} were"
    return f", and {now} written after it"


@dataclass
class _Walk:
    """The chain walked in stored order; see the module's docstring."""

    checkpoints: dict[int, list[tuple[int, Checkpoint]]]  # seq -> (line, checkpoint)
    problems: list[Problem] = field(default_factory=list)
    more: int = 0
    rows: int = 0
    max_orig: int = 0
    prev_orig: int = 0
    prev_hash: str = GENESIS
    shift: int = 0
    searches: int = 0
    missing: list[list[int]] = field(default_factory=list)  # [first, last, stored-after]
    matched_cp: int = 0  # the last checkpointed seq whose hash matched
    # checkpointed seqs now held by records written after their checkpoint: the records it
    # covered were cut off, and their seqs taken again by records appended since
    reused: list[tuple[int, int, Checkpoint]] = field(default_factory=list)
    head: tuple[int, str] = (0, GENESIS)
    last_at: float = 0.0

    def add(self, kind: str, seq: int | None, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind, seq, message))
        else:
            self.more += 1

    def row(self, r: tuple[Any, ...]) -> None:
        self.rows += 1
        stored = r[0]
        orig = self._original(r)
        if orig is None:
            self.add("edited", stored, f"record {stored} ({_what(r)}) was edited: its content "
                     "no longer matches its hash")
            orig = stored
        elif orig == self.prev_orig + 1 and r[13] != self.prev_hash:
            self.add("replaced", orig - 1, f"record {orig - 1} was replaced: its content and "
                     f"hash were rewritten, and record {orig} still commits to the original")
        self._place(orig, stored, r)
        self._check_point(orig, r[14], r[1])
        self.prev_orig, self.prev_hash = orig, r[14]
        self.head, self.last_at = (stored, r[14]), r[1]

    def _original(self, r: tuple[Any, ...]) -> int | None:
        """The seq this row's hash was made under: its own, the current shift's, or one
        within SEARCH of it (None: none fits, the content itself changed)."""
        stored: int = r[0]
        tries = [stored, stored + self.shift] if self.shift else [stored]
        if self.searches < MAX_SEARCHES:
            tries += [self.prev_orig + 1]
        for seq in tries:
            if _fits(r, seq):
                self.shift = seq - stored
                return seq
        if self.searches >= MAX_SEARCHES:
            return None
        self.searches += 1
        for d in range(1, SEARCH + 1):
            for seq in (stored + d, stored - d):
                if seq > 0 and _fits(r, seq):
                    self.shift = seq - stored
                    return seq
        return None

    def _place(self, orig: int, stored: int, r: tuple[Any, ...]) -> None:
        if orig > self.max_orig:
            if orig > self.max_orig + 1:
                self.missing.append([self.max_orig + 1, orig - 1, stored])
            self.max_orig = orig
            return
        for gap in self.missing:
            if gap[0] <= orig <= gap[1]:
                self.add("moved", orig, f"record {orig} ({_what(r)}) was moved: it is stored "
                         f"at seq {stored}, after records written later than it (reordered)")
                self._fill(gap, orig)
                return
        self.add("repeated", orig, f"the row stored at seq {stored} ({_what(r)}) repeats "
                 f"record {orig}: a record was inserted or copied")

    def _fill(self, gap: list[int], orig: int) -> None:
        self.missing.remove(gap)
        if gap[0] < orig:
            self.missing.append([gap[0], orig - 1, gap[2]])
        if orig < gap[1]:
            self.missing.append([orig + 1, gap[1], gap[2]])

    def _check_point(self, orig: int, h: str, at: Any) -> None:
        for line, cp in self.checkpoints.get(orig, ()):
            if cp.hash == h:
                self.matched_cp = max(self.matched_cp, orig)
            elif isinstance(at, float) and at > cp.at:  # written after the checkpoint was
                self.reused.append((orig, line, cp))
            else:
                self.add("rewritten", orig, f"record {orig} does not match checkpoint line "
                         f"{line} (signed {when(cp.at)}): the chain was rewritten, its "
                         f"hashes recomputed, somewhere from seq {self.matched_cp + 1} to "
                         f"{orig}")

    def finish(self, paths: AuditPaths, db: sqlite3.Connection) -> None:
        told: set[int] = set()
        for orig, line, cp in sorted(self.reused, key=lambda x: -x[0]):  # the widest first
            first = first_at_or_after(db, math.nextafter(cp.at, math.inf)) or orig
            if first in told:
                continue
            told.add(first)
            self.add("cut-off", first, f"records after seq {first - 1} were cut off: "
                     f"checkpoint line {line} (signed {when(cp.at)}) covers the chain up to "
                     f"seq {orig}{_written_after(first, orig)}")
        for first, last, stored_after in sorted(self.missing):
            renumbered = " (and the records after it renumbered to hide the gap)" \
                if stored_after <= last else ""
            where = f"the chain starts at record {last + 1}" if first == 1 else \
                f"the chain goes from record {first - 1} to record {last + 1}"
            self.add("removed", first, f"{_name((first, last))} removed: {where}{renumbered}")
        top = max(self.checkpoints, default=0)
        if top > self.max_orig:
            line, cp = self.checkpoints[top][-1]
            later = first_at_or_after(db, math.nextafter(cp.at, math.inf))
            cut = self.max_orig if later is None else min(self.max_orig, later - 1)
            since = "" if cut == self.max_orig else _written_after(cut + 1, self.max_orig)
            self.add("cut-off", cut + 1, f"records after seq {cut} were cut off: checkpoint "
                     f"line {line} (signed {when(cp.at)}) covers the chain up to seq {top}"
                     f"{since}")
        elif self.rows and not self.checkpoints and self.last_at < time.time() - GRACE_S:
            self.add("no-checkpoint", None, f"no signed checkpoint covers the chain "
                     f"({paths.checkpoints} is missing or empty, though its last record is "
                     f"from {when(self.last_at)}): records cut off at its end could not be "
                     "told")


def _what(r: tuple[Any, ...]) -> str:
    try:
        return f"{r[6]} at {when(float(r[1]))}"
    except (TypeError, ValueError, OverflowError, OSError):
        return "unreadable"


def _fits(r: tuple[Any, ...], seq: int) -> bool:
    try:
        return bool(chain_hash(r[13], content(seq, *r[1:13])) == r[14])
    except (TypeError, ValueError, UnicodeError, AttributeError):
        return False


def _checkpoints(paths: AuditPaths, walk: _Walk, public_key: Path | None
                 ) -> tuple[int, dict[int, list[tuple[int, Checkpoint]]]]:
    """The checkpoints whose signatures check out, by seq; bad lines become problems."""
    lines = list(read_lines(paths.checkpoints))
    good: dict[int, list[tuple[int, Checkpoint]]] = {}
    if not lines:
        return 0, good
    pub_path = public_key or paths.pub
    try:
        pub = load_public_key(pub_path)
    except (OSError, ValueError) as err:
        walk.add("no-key", None, f"the checkpoints cannot be checked: {pub_path}: {err}")
        return len(lines), good
    for n, line in lines:
        try:
            cp = Checkpoint.parse(line)
        except ValueError as err:
            walk.add("bad-checkpoint", None, f"checkpoint line {n} is not a checkpoint: {err}")
            continue
        if not cp.valid(pub):
            walk.add("bad-signature", cp.seq, f"checkpoint line {n} (seq {cp.seq}, signed "
                     f"{when(cp.at)}) has a bad signature: forged, or not made with the key "
                     f"of {pub_path}")
            continue
        good.setdefault(cp.seq, []).append((n, cp))
    return len(lines), good


_SELECT = ("SELECT seq, at, tenant, actor, request_id, trace_id, action, sandbox, iteration, "
           "suite, host, outcome, details, prev_hash, hash FROM records WHERE seq > ? "
           "ORDER BY seq LIMIT ?")


def _tolerant(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _page(db: sqlite3.Connection, after: int) -> list[tuple[Any, ...]]:
    try:
        return db.execute(_SELECT, (after, PAGE)).fetchall()
    except sqlite3.OperationalError as err:
        if "decode" not in str(err):
            raise
    # Text that is not UTF-8 (written behind our back): read as stored, so that the record
    # shows as edited instead of stopping the walk. Only for such a page: it is slower.
    db.text_factory = _tolerant
    try:
        return db.execute(_SELECT, (after, PAGE)).fetchall()
    finally:
        db.text_factory = str


def _rows(db: sqlite3.Connection) -> Iterator[tuple[Any, ...]]:
    after: Any = -(1 << 62)
    while True:
        page = _page(db, after)
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1][0]


def verify(data_dir: Path | str, public_key: Path | None = None) -> Report:
    """Walk the whole chain and check every checkpoint. OSError when there is no trail."""
    t0 = time.perf_counter()
    paths = AuditPaths.of(data_dir)
    db = open_read(paths.db)
    try:
        walk = _Walk({})
        n_cps, walk.checkpoints = _checkpoints(paths, walk, public_key)
        for r in _rows(db):
            walk.row(r)
        walk.finish(paths, db)
    finally:
        db.close()
    good = [seq for seq in walk.checkpoints if seq <= walk.max_orig]
    return Report(ok=not walk.problems and not walk.more, records=walk.rows,
                  head_seq=walk.head[0], head_hash=walk.head[1], checkpoints=n_cps,
                  last_checkpoint_seq=max(good, default=None), problems=tuple(walk.problems),
                  more_problems=walk.more, elapsed_s=time.perf_counter() - t0)


__all__ = ["MAX_PROBLEMS", "Problem", "Report", "verify"]
