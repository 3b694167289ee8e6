"""`tryfleet secret set | ls | rm`: tenants' named secrets, through the API with an admin key
(this host's local admin key by default). A value is read from stdin, never from the command
line (which other users of the host can see, and shells keep in their history)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tryfleet.errors import BadRequest, TryfleetError

from .common import EXIT_USAGE, connect, error, failed


def add_parser(sub: Any, api_flags: Any) -> None:
    secret = sub.add_parser("secret", help="tenants' secrets: set, ls, rm (needs an admin key)",
                            description="Secrets are kept on the head only and exposed to a "
                            "command as environment variables when a request names them "
                            "(and the tenant's policy `secrets` allows); their values are "
                            "masked in output.")
    ssub = secret.add_subparsers(dest="secret_command", metavar="ACTION")
    ssub.required = True
    put = ssub.add_parser("set", help="store a secret; its value read from stdin",
                          description="e.g. `printf %s \"$TOKEN\" | tryfleet secret set "
                          "--tenant acme GITHUB_TOKEN`; one trailing newline is dropped.")
    put.add_argument("--tenant", required=True, help="whose secret")
    put.add_argument("name", help="its name, also the environment variable it becomes")
    ls = ssub.add_parser("ls", help="a tenant's secrets, names only")
    ls.add_argument("--tenant", required=True, help="whose secrets")
    ls.add_argument("--json", action="store_true", help="print JSON")
    rm = ssub.add_parser("rm", help="remove a secret")
    rm.add_argument("--tenant", required=True, help="whose secret")
    rm.add_argument("name")
    for cmd in (put, ls, rm):
        api_flags(cmd)


def read_value(stream: Any) -> str:
    """The value on stdin, less one trailing newline (as `echo` adds); BadRequest if empty or
    when stdin is a terminal (the value would show as it is typed)."""
    if stream.isatty():
        raise BadRequest("the secret's value is read from stdin: pipe it in, e.g. "
                         "`printf %s \"$TOKEN\" | tryfleet secret set --tenant T NAME`")
    value: str = stream.read()
    value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise BadRequest("no value on stdin")
    return value


def _set(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        value = read_value(sys.stdin)
        got = connect(args, data_dir).secrets.set(args.tenant, args.name, value)
    except TryfleetError as err:
        return failed(err)
    print(f"secret {got['name']} of tenant {got['tenant']} stored")
    return 0


def _ls(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        items = connect(args, data_dir).secrets.list(args.tenant)
    except TryfleetError as err:
        return failed(err)
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    print(f"{'NAME':<32} {'SET':<16} BY")
    for s in items:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["set_at"]))
        print(f"{s['name']:<32} {when:<16} {s.get('set_by', '')}")
    return 0


def _rm(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        connect(args, data_dir).secrets.remove(args.tenant, args.name)
    except TryfleetError as err:
        return failed(err)
    print(f"secret {args.name} of tenant {args.tenant} removed")
    return 0


def main(args: argparse.Namespace, data_dir: Path) -> int:
    actions: dict[str, Any] = {"set": _set, "ls": _ls, "rm": _rm}
    if args.secret_command not in actions:
        return error(f"unknown action {args.secret_command!r}", EXIT_USAGE)
    return int(actions[args.secret_command](args, data_dir))


__all__ = ["add_parser", "main", "read_value"]
