"""`tryfleet batch SPECS.jsonl --suite NAME`: many iterations, live progress, a summary.

Input, one JSON object per line: id, image, command (argv list), files (guest path -> text),
env, timeout_s, cpus, mem_mib, limits (the names of the shared-resource limits it holds),
retries (and optionally disk_mib, priority, cwd).
Output (--out), one JSON object per line as each iteration ends: id, state, exit_code, stdout,
stderr, started_at, ended_at, duration_s, attempts, host, trace_id (and suite, tenant, error,
stdout_truncated, stderr_truncated). Ids default to SUITE-LINE, so re-running the same batch
resubmits nothing twice: it picks up the results. Results come from the API's event stream of
the suite's ended iterations (no polling), which survives a restart of the gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tryfleet.errors import BadRequest, TryfleetError

from .common import EXIT_USAGE, connect, error, failed
from .fleetcmds import parse_limits

if TYPE_CHECKING:
    from tryfleet.fleet import Fleet

RESULT_FIELDS = ("id", "state", "exit_code", "stdout", "stderr", "started_at", "ended_at",
                 "duration_s", "attempts", "host", "trace_id", "suite", "tenant", "error",
                 "stdout_truncated", "stderr_truncated")
STATES = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED", "INFRA_ERROR")
SUBMIT_CHUNK = 500
COUNTS_EVERY_S = 1.0  # how often the progress line asks for the suite's counts
RECONNECT_S = 3600.0  # a gateway or scheduler that restarts mid-batch is waited for


def read_specs(path: Path, suite: str) -> tuple[list[Any], list[str]]:
    """Every valid line as an Iteration, and one message per bad line (with its number)."""
    from tryfleet.scheduler.records import InvalidIteration, Iteration

    # egress is the tenant policy's to grant (the gateway fills it in), never a spec's
    fields = set(Iteration.__dataclass_fields__) - {"egress"}
    its, problems = [], []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        return [], [f"{path}: {err.strerror}"]
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise InvalidIteration("a line must be a JSON object")
            unknown = set(data) - fields
            if "egress" in unknown:
                raise InvalidIteration("'egress' is not a spec field: network comes from the "
                                       "tenant's policy (network = \"egress\", egress = [...] in "
                                       "policy.toml), for every iteration of the tenant")
            if unknown:
                raise InvalidIteration(f"unknown field(s) {', '.join(sorted(unknown))}; "
                                       f"known: {', '.join(sorted(fields))}")
            if "image" not in data or "command" not in data:
                raise InvalidIteration("'image' and 'command' are required")
            if not isinstance(data["command"], list):
                raise InvalidIteration("'command' must be a list of strings (argv)")
            data = {**data, "id": data.get("id") or f"{suite}-{n}"}
            it = Iteration.from_wire(data)
            if it.id in seen:
                raise InvalidIteration(f"id {it.id!r} is already used on line {seen[it.id]}")
            seen[str(it.id)] = n
            its.append(it)
        except (json.JSONDecodeError, InvalidIteration, TypeError) as err:
            problems.append(f"{path}:{n}: {err}")
    return its, problems


class Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.counts: Counter[str] = Counter()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, live: dict[str, int], force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self.tty and now - self.last < 5:
            return
        self.last = now
        done = sum(self.counts.values())
        width = 30
        filled = int(width * done / max(1, self.total))
        bar = "#" * filled + "-" * (width - filled)
        parts = "  ".join(f"{s.lower()} {self.counts[s]}" for s in STATES if self.counts[s])
        running = live.get("RUNNING", 0) + live.get("PLACED", 0)
        line = (f"[{bar}] {done}/{self.total}  running {running}  queued {live.get('QUEUED', 0)}"
                f"  {parts}")
        end = "\r" if self.tty and not force else "\n"
        print(line.ljust(110), end=end, file=sys.stderr, flush=True)


def summary(results: list[dict[str, Any]], wall_s: float) -> None:
    by_state = Counter(r["state"] for r in results)
    durations = sorted(r["duration_s"] for r in results if r["duration_s"] is not None)
    p50 = durations[len(durations) // 2] if durations else 0.0
    print(f"\n{'STATE':<12} {'COUNT':>6}")
    for state in STATES:
        print(f"{state:<12} {by_state.get(state, 0):>6}")
    print(f"{'TOTAL':<12} {len(results):>6}")
    retried = sum(1 for r in results if r["attempts"] > 1)
    print(f"\nwall {wall_s:.1f}s, {len(results) / max(wall_s, 1e-9) * 60:.1f} iterations/min, "
          f"median iteration {p50:.1f}s, {retried} needed more than one attempt")


def batch(args: argparse.Namespace, data_dir: Path) -> int:
    its, problems = read_specs(Path(args.specs), args.suite)
    if problems:
        for p in problems:
            print(f"tryfleet: invalid: {p}", file=sys.stderr)
        if not args.skip_invalid:
            return error(f"{len(problems)} malformed line(s) in {args.specs}; nothing was "
                         "submitted. Fix them, or pass --skip-invalid to run the rest",
                         EXIT_USAGE)
    if not its:
        return error(f"{args.specs} holds no iterations", EXIT_USAGE)
    try:
        limits = parse_limits(args.limit)
        fleet = connect(args, data_dir, reconnect_s=RECONNECT_S)
        started = time.monotonic()
        ids: list[str] = []
        for i in range(0, len(its), SUBMIT_CHUNK):
            ids += fleet.submit(its[i:i + SUBMIT_CHUNK], suite=args.suite, tenant=args.tenant,
                                max_wall_s=args.max_wall_s, limits=limits if i == 0 else None)
    except BadRequest as err:
        return failed(_why_limits(err, limits) if limits else err)
    except TryfleetError as err:
        return failed(err)
    print(f"submitted {len(ids)} iteration(s) to suite {args.suite}", file=sys.stderr)
    return _follow(fleet, ids, args, started)


def _why_limits(err: BadRequest, limits: dict[str, int]) -> BadRequest:
    """A refusal of --limit sizes (a key that is not an admin's may only name the sizes in
    force) said in the command's own terms."""
    if "set by admins" not in str(err):
        return err
    given = ",".join(f"{k}={v}" for k, v in limits.items())
    return BadRequest(f"--limit {given}: {err}; with a key that is not an admin's, drop "
                      "--limit or give the size in force")


def _follow(fleet: Fleet, ids: list[str], args: argparse.Namespace, started: float) -> int:
    """Results as they end, from the suite's stream of ended iterations (which first gives what
    ended before: a second run of the same batch picks its results up)."""
    progress = Progress(len(ids))
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 (closed below)
    results: list[dict[str, Any]] = []
    live: dict[str, int] = {}
    asked = 0.0
    try:
        for r in fleet.watch(ids, suite=args.suite, tenant=args.tenant, output=out is not None):
            row = r.to_json()
            results.append(row)
            progress.counts[r.state] += 1
            if out:
                out.write(json.dumps({k: row.get(k) for k in RESULT_FIELDS}) + "\n")
                out.flush()
            if time.monotonic() - asked >= COUNTS_EVERY_S:
                asked, live = time.monotonic(), fleet.counts(args.suite)
            progress.show(live)
    except TryfleetError as err:  # the fleet gone for good: what we have is on disk
        return error(f"lost the fleet ({err}); the batch continues in the ledger: run the same "
                     "command again to pick up its results")
    except KeyboardInterrupt:
        print("\ninterrupted: the batch keeps running in the fleet (stop it with "
              f"`tryfleet cancel --suite {args.suite}`)", file=sys.stderr)
        return 130
    finally:
        if out:
            out.close()
    progress.show({}, force=True)
    summary(results, time.monotonic() - started)
    if args.out:
        print(f"results: {args.out}")
    return 0
