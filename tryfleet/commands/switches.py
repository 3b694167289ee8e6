"""`tryfleet freeze | thaw | kill | switches`: durable kill switches, through the API with an
admin key (this host's local admin key by default); the person at the CLI (user@host) is
recorded beside the key.

    tryfleet freeze --tenant acme --reason "incident 42"   # admit nothing new of acme
    tryfleet kill --key 3f2a9c1d0b7e                       # revoke it, stop its work
    tryfleet freeze --host node-2                          # drain: running work finishes
    tryfleet switches                                      # who flipped what, when, why
    tryfleet thaw --tenant acme                            # lift it
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import time
from typing import TYPE_CHECKING, Any

from tryfleet.errors import BadRequest, TryfleetError

from .common import EXIT_USAGE, connect, error, failed

if TYPE_CHECKING:
    from pathlib import Path

TARGETS = ("iteration", "sandbox", "suite", "key", "host")  # --tenant: its own, or qualifies
WHAT = {"freeze": "admit nothing new under it; what runs goes on (a host: drained)",
        "kill": "admit nothing new, and cancel, stop and close what runs under it now (a key "
                "is also revoked)",
        "thaw": "lift the switch on the target: what it held starts again"}


def add_parsers(sub: Any, api_flags: Any) -> None:
    """`freeze`, `thaw`, `kill` and `switches` on the CLI's subcommands."""
    for name in ("freeze", "kill", "thaw"):
        cmd = sub.add_parser(name, help=WHAT[name].split(";")[0].split(",")[0],
                             description=f"{name}: {WHAT[name]}. Exactly one target; --tenant "
                             "with --iteration or --suite says whose.")
        for level in TARGETS:
            cmd.add_argument(f"--{level}", metavar="NAME" if level in ("host", "suite") else "ID")
        cmd.add_argument("--tenant", help="a tenant (or the tenant of --iteration/--suite)")
        cmd.add_argument("--all", action="store_true", help="everything")
        cmd.add_argument("--reason", default="", help="why (recorded, and shown in refusals)")
        cmd.add_argument("--json", action="store_true", help="print JSON")
        api_flags(cmd)
    ls = sub.add_parser("switches", help="the kill switches in force: who, when, why")
    ls.add_argument("--history", action="store_true", help="lifted ones too, newest first")
    ls.add_argument("--json", action="store_true", help="print JSON")
    api_flags(ls)


def target_of(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(level, target, tenant qualifying it) from the flags; BadRequest unless exactly one."""
    given = [lv for lv in TARGETS if getattr(args, lv, None)]
    if args.all:
        given.append("everything")
    if len(given) != 1 and not (not given and args.tenant):
        raise BadRequest("name exactly one of --iteration, --sandbox, --suite, --tenant, "
                         "--key, --host or --all")
    if not given:
        return "tenant", args.tenant, None
    level = given[0]
    if args.tenant and level not in ("iteration", "suite"):
        raise BadRequest("--tenant goes with --iteration or --suite only, or alone")
    return level, "" if level == "everything" else getattr(args, level), args.tenant


def person() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _what(s: dict[str, Any]) -> str:
    return "everything" if s["level"] == "everything" else f"{s['level']} {s['target']}"


def flip(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        level, target, tenant = target_of(args)
        switches = connect(args, data_dir).switches
        if args.command == "thaw":
            got = switches.lift(level, target, reason=args.reason, tenant=tenant,
                                person=person())
        else:
            got = switches.flip(level, target, args.command, reason=args.reason,
                                tenant=tenant, person=person())
    except TryfleetError as err:
        return failed(err)
    if args.json:
        print(json.dumps(got, indent=2))
    elif args.command == "thaw":
        print(f"lifted switch #{got['id']} ({got['strength']} of {_what(got)}): what it held "
              "starts again")
    else:
        s = got["switch"]
        state = "killed" if s["strength"] == "kill" else "frozen"
        new = "new" if got["created"] else "already in force"
        print(f"switch #{s['id']}: {_what(s)} is {state} ({new}) until `tryfleet thaw`; by "
              f"{s['flipped_by']} at {_when(s['flipped_at'])}")
        done = [f"{got[k]} {k.replace('_', ' ')}" for k in ("queued_cancelled",
                "running_stopped", "sandboxes_closed") if got.get(k)]
        if got.get("key_revoked"):
            done.append("the key revoked")
        if done:
            print("now: " + ", ".join(done))
    return 0


def ls(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        got = connect(args, data_dir).switches.list(args.history)
    except TryfleetError as err:
        return failed(err)
    if args.json:
        print(json.dumps(got, indent=2))
        return 0
    if not got:
        print("no switches in force" if not args.history else "no switches ever flipped")
        return 0
    print(f"{'ID':<5} {'STRENGTH':<8} {'WHAT':<32} {'FLIPPED':<19} {'BY':<36} "
          f"{'LIFTED':<19} REASON")
    for s in got:
        print(f"{s['id']:<5} {s['strength']:<8} {_what(s)[:32]:<32} "
              f"{_when(s['flipped_at']):<19} {s['flipped_by'][:36]:<36} "
              f"{_when(s.get('lifted_at')):<19} {s['reason']}")
    return 0


def main(args: argparse.Namespace, data_dir: Path) -> int:
    if args.command == "switches":
        return ls(args, data_dir)
    if args.command in ("freeze", "kill", "thaw"):
        return flip(args, data_dir)
    return error(f"unknown command {args.command!r}", EXIT_USAGE)


__all__ = ["add_parsers", "main", "person", "target_of"]
