"""`tryfleet up | down` (the fleet side: Ray, the node agent, the scheduler, the API) and
`tryfleet status | ps | logs | cancel`, which use the fleet through its HTTP API."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from tryfleet.errors import BadRequest, TryfleetError

from .common import EXIT_USAGE, connect, error, failed

ACTIVE = ("QUEUED", "PLACED", "RUNNING")


def parse_limits(values: list[str]) -> dict[str, int]:
    limits = {}
    for item in values:
        name, sep, number = item.partition("=")
        if not sep or not name or not number.isdigit() or int(number) < 1:
            raise BadRequest(f"--limit {item!r}: expected NAME=N with N >= 1, e.g. ci-db=8")
        limits[name] = int(number)
    return limits


def up(args: argparse.Namespace, data_dir: Path) -> int:
    from tryfleet import cluster
    from tryfleet.nodeagent import daemons
    from tryfleet.nodeagent.errors import BadRequest as NodeBadRequest
    from tryfleet.nodeagent.node import PoolTarget

    try:
        limits = parse_limits(args.limit)
        for target in args.pool:
            PoolTarget.parse(target)  # a typo fails here, before anything starts
        daemons.ensure()  # this host's node agent needs libvirtd: before Ray starts
        if args.address:
            cluster.join(args.address)
            address = args.address
        else:
            address = cluster.start_head(data_dir, bind=args.bind, port=args.port,
                                         autoscaling_config=args.autoscaling_config)
        cluster.init(address)
        host = args.host or socket.gethostname()
        cluster.ensure_actors(data_dir, host=host, limits=limits, pool=tuple(args.pool))
        if args.address:  # the head serves the API
            print(f"tryfleet is up: this host ({host}) joined the fleet at {address}")
            return 0
        url, key = cluster.start_front_door(data_dir, args.api_listen)
        from tryfleet.fleet import connect as connect_fleet

        with connect_fleet(url, key) as fleet:
            status = fleet.status()
    except NodeBadRequest as err:
        return error(str(err), EXIT_USAGE)
    except TryfleetError as err:
        return failed(err)
    hosts = ", ".join(h["host"] for h in status.get("hosts", []) if not h.get("lost")) \
        or "none yet"
    print(f"tryfleet is up: Ray at {address}, scheduler pid {status.get('pid', '?')}, "
          f"hosts: {hosts}")
    if status.get("ledger"):
        print(f"ledger: {status['ledger']}")
    print(f"API: {url} (docs at {url}/docs); local admin key in {data_dir}/admin.key")
    print(f"control room: {url}/ in a browser, signed in with that key; metrics: {url}/metrics")
    print("next: tryfleet batch SPECS.jsonl --suite NAME, tryfleet status, "
          "tryfleet key create --tenant T, tryfleet down")
    return 0


def down(args: argparse.Namespace, data_dir: Path) -> int:
    from tryfleet import cluster

    stopped = cluster.stop(data_dir)
    if not stopped:
        print("nothing to stop: `tryfleet up` has not started a fleet here")
        return 0
    print(f"stopped {len(stopped)} thing(s) that `tryfleet up` started:")
    for item in stopped:
        print(f"  {item}")
    return 0


def status(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        st = connect(args, data_dir).status()
    except TryfleetError as err:
        return failed(err)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"scheduler pid {st.get('pid') or '?'}, ledger {st.get('ledger') or '?'}, in flight "
          f"{st.get('in_flight', '?')}")
    print("hosts:")
    for h in st.get("hosts", []):
        print("  " + _host_line(h))
    if st.get("limits"):
        print("limits: " + ", ".join(f"{k}={_limit(v)}" for k, v in st["limits"].items()))
    print("iterations: " + (_counts(st.get("counts") or {}) or "none"))
    for tenant, counts in sorted((st.get("tenants") or {}).items()):
        print(f"  {tenant:<20} {_counts(counts)}")
    return 0


def _limit(value: Any) -> str:
    """A limit as the API gives it ({"size", "in_use"}) or a bare size."""
    if isinstance(value, dict):
        return f"{value.get('size', '?')} ({value.get('in_use', 0)} in use)"
    return str(value)


def _counts(counts: dict[str, int]) -> str:
    return "  ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _host_line(h: dict[str, Any]) -> str:
    mark = "LOST" if h.get("lost") else ("pressured" if h.get("pressured") else "ok")
    return (f"{h.get('host', '?'):<20} {mark:<10} accel {h.get('accel', '?')}  running "
            f"{h.get('running', '?')}  capacity {h.get('cpus', '?')} cpus / "
            f"{h.get('mem_mib', '?')} MiB  images {h.get('images', [])}")


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def ps(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        rows = connect(args, data_dir).iterations(None if args.all else ACTIVE,
                                                  limit=args.limit)
    except TryfleetError as err:
        return failed(err)
    print(f"{'ID':<24} {'SUITE':<16} {'TENANT':<10} {'STATE':<12} {'HOST':<16} {'TRY':>3} "
          f"{'EXIT':>4} {'RUNNING':>7}")
    for r in rows:
        exit_code = "" if r.exit_code is None else r.exit_code
        print(f"{r.id:<24} {r.suite:<16} {r.tenant:<10} {r.state:<12} {(r.host or '-'):<16} "
              f"{r.attempts:>3} {exit_code:>4} {_age(r.started_at):>7}")
    return 0


def logs(args: argparse.Namespace, data_dir: Path) -> int:
    """The header and attempts on stderr; the output (live while it runs) as bytes."""
    try:
        fleet = connect(args, data_dir)
        detail = fleet.get(args.id)
        out = fleet.output(args.id)
    except TryfleetError as err:
        return failed(err)
    r = detail.result
    exit_part = "" if r.exit_code is None else f" exit {r.exit_code}"
    print(f"# {r.id}: {r.state}{exit_part} on {r.host or '-'} after {r.attempts} attempt(s), "
          f"suite {r.suite}, trace {r.trace_id}", file=sys.stderr)
    for a in detail.attempts:
        print(f"#   attempt {a.attempt} on {a.host or '-'}: {a.outcome or 'running'}"
              f"{' - ' + a.error if a.error else ''}", file=sys.stderr)
    if r.error:
        print(f"# error: {r.error}", file=sys.stderr)
    if not out.done:
        print("# output so far:", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.buffer.write(out.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(out.stderr)
    sys.stderr.buffer.flush()
    return 0


def cancel(args: argparse.Namespace, data_dir: Path) -> int:
    chosen = [x for x in (args.id, args.suite, args.tenant, args.all or None) if x]
    if len(chosen) != 1:
        return error("cancel takes exactly one of: ID, --suite S, --tenant T, --all", 2)
    try:
        got = connect(args, data_dir).cancel(args.id, args.suite, args.tenant, args.all)
    except TryfleetError as err:
        return failed(err)
    print(f"cancelled {got['queued_cancelled']} queued; stopping {got['running_stopped']} "
          "running (their VMs are destroyed)")
    return 0
