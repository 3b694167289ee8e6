"""`tryfleet audit ls | trace | verify | export`: the audit trail, read on the head.

These read `<data>/audit.db` (and its checkpoints) directly, read-only: run them on the head,
as a user who may read the data directory. They neither wait for the fleet nor need it up.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tryfleet.errors import BadRequest

EXIT_TAMPERED = 1  # verify: the chain is not intact
EXIT_USAGE = 2
EXIT_INFRA = 125  # the trail could not be read
WHERE = ("Reads DATA/audit.db directly (read-only; DATA is --data-dir, $TRYFLEET_DATA or "
         "/var/lib/tryfleet): run it on the head of the fleet. Over HTTP the same is "
         "GET /v1/audit, /v1/audit/trace/ID, /v1/audit/verify and /v1/audit/export.")
DETAILS_CHARS = 60


def add_parser(sub: Any) -> None:
    """`tryfleet audit ...` on the CLI's subcommands."""
    audit = sub.add_parser("audit", help="the audit trail: ls, trace, verify, export",
                           description="The audit trail of every action. " + WHERE)
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True
    ls = asub.add_parser("ls", help="records, newest last", description=(
        "The last --limit records that match every filter given, oldest first. " + WHERE))
    ls.add_argument("--tenant")
    ls.add_argument("--sandbox")
    ls.add_argument("--iteration")
    ls.add_argument("--request", help="a request id")
    ls.add_argument("--action", help="a name (exec.start) or a family (exec.* or exec)")
    ls.add_argument("--since", help="15m, 2h, 7d, an ISO time (2026-05-09T10:00:00Z; "
                    "without a zone: local) or seconds since the epoch")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    trace = asub.add_parser("trace", help="everything one request caused, in order",
                            description="Every record of one request id, across the "
                            "gateway, the scheduler and the hosts, in order. " + WHERE)
    trace.add_argument("request_id")
    trace.add_argument("--json", action="store_true", help="print JSON lines")
    verify = asub.add_parser("verify", help="check the chain and its signed checkpoints",
                             description="Walks the whole chain and checks every signed "
                             "checkpoint. Exits 0 when intact, 1 naming each record edited, "
                             "removed or moved, records cut off after a checkpoint or a "
                             "checkpoint with a bad signature, 125 when it cannot read the "
                             "trail. " + WHERE)
    verify.add_argument("--public-key", type=Path, default=None, metavar="FILE",
                        help="check the checkpoints against this copy of audit.pub "
                             "(default: DATA/audit.pub)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    export = asub.add_parser("export", help="records since a time, as JSON lines",
                             description="Records at or after --since, oldest first, one JSON "
                             "object a line (with their hashes, so the chain can be checked "
                             "elsewhere). " + WHERE)
    export.add_argument("--since", help="as for ls (default: everything)")
    export.add_argument("--tenant", help="only this tenant's")


def main(args: argparse.Namespace, data_dir: Path) -> int:
    from tryfleet.audit import AuditPaths

    db = AuditPaths.of(data_dir).db
    try:
        if args.audit_command == "verify":
            return _verify(data_dir, args)
        if not db.exists():
            raise FileNotFoundError(f"no audit trail at {db} (is this the head, and the right "
                                    "--data-dir?)")
        if args.audit_command == "ls":
            return _ls(db, args)
        if args.audit_command == "trace":
            return _trace(db, args)
        return _export(db, args)
    except BadRequest as err:
        return _error(str(err), EXIT_USAGE)
    except BrokenPipeError:  # | head
        return 0
    except OSError as err:
        return _error(str(err), EXIT_INFRA)


def _error(message: str, code: int) -> int:
    print(f"tryfleet: error: {message}", file=sys.stderr, flush=True)
    return code


def _time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _on(r: Any) -> str:
    parts = [r.sandbox, r.iteration and f"it:{r.iteration}", r.host and f"@{r.host}"]
    return " ".join(p for p in parts if p) or "-"


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars - 3] + "..."


def _table(records: list[Any]) -> None:
    print(f"{'SEQ':>7} {'TIME (UTC)':<24} {'TENANT':<10} {'ACTOR':<16} {'ACTION':<18} "
          f"{'OUTCOME':<10} {'REQUEST':<24} {'ON':<20} DETAILS")
    for r in records:
        print(f"{r.seq:>7} {_time(r.at):<24} {r.tenant or '-':<10} {r.actor:<16} "
              f"{r.action:<18} {r.outcome or '-':<10} {r.request_id or '-':<24} "
              f"{_on(r):<20} {_short(r.details, DETAILS_CHARS)}")


def _ls(db: Path, args: argparse.Namespace) -> int:
    from tryfleet.audit import Filter, parse_since, select

    if args.limit < 1:
        raise BadRequest("--limit must be at least 1")
    f = Filter(tenant=args.tenant, sandbox=args.sandbox, iteration=args.iteration,
               request_id=args.request, action=args.action,
               since=None if args.since is None else parse_since(args.since),
               limit=args.limit, newest=True)
    got = select(db, f)
    if args.json:
        print(json.dumps([r.to_json() for r in got], indent=1, ensure_ascii=False))
    else:
        _table(got)
    return 0


def _trace(db: Path, args: argparse.Namespace) -> int:
    from tryfleet.audit import trace

    got = trace(db, args.request_id)
    if not got:
        return _error(f"no record of request {args.request_id!r} in {db}", EXIT_USAGE)
    if args.json:
        for r in got:
            print(json.dumps(r.to_json(), separators=(",", ":"), ensure_ascii=False))
        return 0
    print(f"# request {args.request_id}: {len(got)} records, "
          f"{_time(got[0].at)} to {_time(got[-1].at)}")
    for r in got:
        who = " ".join(p for p in (r.tenant and f"tenant={r.tenant}", f"actor={r.actor}",
                                   r.outcome and f"outcome={r.outcome}") if p)
        print(f"{r.seq:>7} {_time(r.at)} {r.action:<18} {who} on={_on(r)}")
        print(f"        {r.details}")
    return 0


def _verify(data_dir: Path, args: argparse.Namespace) -> int:
    from tryfleet.audit import verify

    report = verify(data_dir, args.public_key)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for p in report.problems:
            print(p.message)
        if report.more_problems:
            print(f"... and {report.more_problems} more problems")
        print(f"{report.summary()} (checked in {report.elapsed_s:.2f} s)")
    return 0 if report.ok else EXIT_TAMPERED


def _export(db: Path, args: argparse.Namespace) -> int:
    from tryfleet.audit.query import export_lines, parse_since

    since = None if args.since is None else parse_since(args.since)
    for chunk in export_lines(db, since, args.tenant):
        sys.stdout.write(chunk)
    sys.stdout.flush()
    return 0


__all__ = ["EXIT_INFRA", "EXIT_TAMPERED", "add_parser", "main"]
