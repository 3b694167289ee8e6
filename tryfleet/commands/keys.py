"""`tryfleet key create | ls | revoke`: API keys, through the API, with an admin key (this
host's local admin key by default). A new key is printed once, alone on stdout, so
`KEY=$(tryfleet key create --tenant acme)` keeps it; what it is goes to stderr."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from tryfleet.errors import BadRequest, TryfleetError

from .common import EXIT_USAGE, connect, error, failed

DEFAULT_SCOPES = ("sandbox", "batch")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(text: str) -> float:
    """30d, 12h, 90m, 3600s or 3600 -> seconds; BadRequest saying what is expected."""
    m = _DURATION.match(text.strip().lower())
    if m is None or float(m[1]) <= 0:
        raise BadRequest(f"--expires {text!r}: expected a duration such as 30d, 12h, 90m or "
                         "3600s")
    return float(m[1]) * _UNIT_S[m[2]]


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def create(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        expires = None if args.expires is None else parse_duration_s(args.expires)
        got = connect(args, data_dir).keys.create(args.tenant, args.scope or DEFAULT_SCOPES,
                                                  expires, args.name)
    except TryfleetError as err:
        return failed(err)
    if args.json:
        print(json.dumps(got, indent=2))
        return 0
    print(got["key"], flush=True)
    print(f"key {got['id']} of tenant {got['tenant']}, scopes {', '.join(got['scopes'])}, "
          f"expires {_when(got.get('expires_at'))}: shown this once, keep it now (revoke it "
          f"with `tryfleet key revoke {got['id']}`)", file=sys.stderr)
    return 0


def ls(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        keys = connect(args, data_dir).keys.list(args.tenant)
    except TryfleetError as err:
        return failed(err)
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    print(f"{'ID':<14} {'TENANT':<16} {'SCOPES':<22} {'STATE':<8} {'CREATED':<16} "
          f"{'EXPIRES':<16} NAME")
    for k in keys:
        print(f"{k['id']:<14} {k['tenant']:<16} {','.join(k['scopes']):<22} "
              f"{k.get('state', '?'):<8} {_when(k.get('created_at')):<16} "
              f"{_when(k.get('expires_at')):<16} {k.get('name', '')}")
    return 0


def revoke(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        connect(args, data_dir).keys.revoke(args.id)
    except TryfleetError as err:
        return failed(err)
    print(f"revoked key {args.id}: it is refused from its next request on")
    return 0


def key(args: argparse.Namespace, data_dir: Path) -> int:
    actions: dict[str, Any] = {"create": create, "ls": ls, "revoke": revoke}
    if args.key_command not in actions:
        return error(f"unknown action {args.key_command!r}", EXIT_USAGE)
    return int(actions[args.key_command](args, data_dir))


__all__ = ["key", "parse_duration_s"]
