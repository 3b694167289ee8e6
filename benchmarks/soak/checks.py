"""The soak's verdict on the ledger: read from the ledger file alone (sqlite3, read-only; the
schema is scheduler/ledger_schema.py's), never through the scheduler that is under test. The
soak submits as one tenant, so its ids are unique in the ledger.

For the ids the soak submitted (each acknowledged by a `submit` call):
- not terminal: an id the ledger does not hold, or holds in QUEUED, PLACED or RUNNING. Counted
  at two moments by the soak: `stuck` (when the grace after the last kill ran out) and `lost`
  (at the very end of the run, after the leak check).
- double committed: an iteration with more than one commit. The ledger commits a result by
  writing it into the iteration's row (`result_attempt` names the attempt) and, in the same
  transaction, that attempt's terminal state into its `attempts` row; an attempt sent back for
  another try is ended as RETRIED instead. So the commits of an iteration are the attempts
  whose row holds a terminal state, plus `result_attempt`; it is double committed when those
  are more than one attempt, or when `result_attempt` is not its latest attempt (an attempt
  was placed after its result was committed).
- also reported: states, attempts per iteration, RETRIED attempts and why, attempts never
  ended although their iteration is terminal (`open_attempts`), and terminal iterations whose
  committed attempt's row records another state than the iteration (`mismatched`).
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Collection, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tryfleet.scheduler.records import TERMINAL

EVIDENCE_MAX = 10  # ids shown with their ledger rows, per finding


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    submitted: int
    states: dict[str, int]  # over the submitted ids; "MISSING" for ids the ledger lacks
    not_terminal: tuple[str, ...]  # submitted, absent or not terminal
    double_committed: tuple[str, ...]
    attempts_per_iteration: dict[int, int]  # attempts -> iterations with that many
    retried: int  # attempts ended RETRIED
    retry_reasons: dict[str, int]  # their errors with ids and numbers masked
    open_attempts: tuple[tuple[str, int], ...]  # never ended; their iteration is terminal
    mismatched: tuple[str, ...]
    evidence: dict[str, list[dict[str, Any]]]  # finding -> ledger rows of its first ids


def connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection next to the scheduler's (WAL: readers never block it)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30,
                         check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def terminal_count(db: sqlite3.Connection) -> int:
    marks = ", ".join("?" for _ in TERMINAL)
    (n,) = db.execute(f"SELECT COUNT(*) FROM iterations WHERE state IN ({marks})",
                      TERMINAL).fetchone()
    return int(n)


def not_terminal(db: sqlite3.Connection, submitted: Collection[str]) -> list[str]:
    """The submitted ids the ledger does not hold in a terminal state."""
    done = {r[0] for r in db.execute("SELECT id, state FROM iterations")
            if r[1] in TERMINAL}
    return sorted(set(submitted) - done)


def first_commit_after(db: sqlite3.Connection, t: float) -> float | None:
    """When the first iteration ended after wall time t (a scheduler kill): None if none."""
    (at,) = db.execute("SELECT MIN(ended_at) FROM iterations WHERE ended_at > ?",
                       (t,)).fetchone()
    return None if at is None else float(at)


def timing(path: Path, killed_at: Sequence[float]) -> dict[str, Any]:
    """When the last iteration ended; the p50 and max of the committed attempts' durations;
    and for each kill (wall times) how long until the next iteration ended: the scheduler was
    back at work."""
    with closing(connect_ro(path)) as db:
        (last,) = db.execute("SELECT MAX(ended_at) FROM iterations").fetchone()
        took = sorted(r[0] for r in db.execute("SELECT duration_s FROM iterations WHERE "
                                               "duration_s IS NOT NULL"))
        after = [first_commit_after(db, t) for t in killed_at]
    return {"last_end": last,
            "iteration_p50_s": round(took[len(took) // 2], 3) if took else None,
            "iteration_max_s": round(took[-1], 3) if took else None,
            "resume_s": [None if a is None else round(a - t, 3)
                         for a, t in zip(after, killed_at, strict=True)]}


def check(path: Path, submitted: Collection[str]) -> LedgerCheck:
    with closing(connect_ro(path)) as db:
        its = {r["id"]: dict(r) for r in db.execute(
            "SELECT id, state, attempt, result_attempt, host, error FROM iterations")}
        rows = [dict(r) for r in db.execute(  # attempts name their iteration by its key
            "SELECT i.id AS iteration_id, a.attempt, a.host, a.placed_at, a.ended_at, "
            "a.outcome, a.error FROM attempts a JOIN iterations i ON i.key = a.iteration_key "
            "ORDER BY i.id, a.attempt")]
    return judge(its, rows, submitted)


def judge(its: dict[str, dict[str, Any]], attempts: Sequence[dict[str, Any]],
          submitted: Collection[str]) -> LedgerCheck:
    """The checks over rows as read from the ledger (iterations by id; attempts rows)."""
    wanted = set(submitted)
    by_it: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        if a["iteration_id"] in wanted:
            by_it.setdefault(a["iteration_id"], []).append(a)
    states = Counter(its[i]["state"] if i in its else "MISSING" for i in wanted)
    pending = sorted(i for i in wanted if i not in its or its[i]["state"] not in TERMINAL)
    double, mismatched, open_ = [], [], []
    for iid in sorted(wanted & its.keys()):
        it, rows = its[iid], by_it.get(iid, [])
        commits = {a["attempt"] for a in rows if a["outcome"] in TERMINAL}
        if it["result_attempt"] is not None:
            commits.add(it["result_attempt"])
        if len(commits) > 1 or (it["result_attempt"] is not None
                                and it["result_attempt"] != it["attempt"]):
            double.append(iid)
        if it["state"] in TERMINAL:
            open_ += [(iid, a["attempt"]) for a in rows if a["ended_at"] is None]
            committed = [a for a in rows if a["attempt"] == it["result_attempt"]]
            if committed and committed[0]["outcome"] != it["state"]:
                mismatched.append(iid)
    retried = [a for rows in by_it.values() for a in rows if a["outcome"] == "RETRIED"]
    evidence = {name: [{"iteration": its.get(i), "attempts": by_it.get(i, [])}
                       for i in ids[:EVIDENCE_MAX]]
                for name, ids in (("not_terminal", pending), ("double_committed", double),
                                  ("mismatched", mismatched)) if ids}
    return LedgerCheck(
        submitted=len(wanted), states=dict(sorted(states.items())),
        not_terminal=tuple(pending), double_committed=tuple(double),
        attempts_per_iteration=dict(sorted(Counter(len(by_it.get(i, [])) for i in wanted)
                                           .items())),
        retried=len(retried),
        retry_reasons=dict(Counter(mask(a["error"]) for a in retried).most_common(8)),
        open_attempts=tuple(open_), mismatched=tuple(mismatched), evidence=evidence)


_IDS = re.compile(r"'[^']*'|\b[0-9a-f]{8,}\b|\b[\w.]*\d[\w.-]*\b")
_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def mask(error: str | None) -> str:
    """The first line of an error with its ids, hosts and numbers replaced by `#`, so alike
    errors group."""
    first = (_ESCAPES.sub("", error or "") or "(no error)").splitlines()[0]
    return _IDS.sub("#", first)[:120]
