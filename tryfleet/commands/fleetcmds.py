"""`tryfleet up | down | status | ps | logs | cancel`: the fleet on Ray."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from tryfleet.nodeagent.errors import BadRequest

from .common import error

FLEET_DOWN = "no tryfleet fleet is running here: start one with `tryfleet up`"


def parse_limits(values: list[str]) -> dict[str, int]:
    limits = {}
    for item in values:
        name, sep, number = item.partition("=")
        if not sep or not name or not number.isdigit() or int(number) < 1:
            raise ValueError(f"--limit {item!r}: expected NAME=N with N >= 1, e.g. ci-db=8")
        limits[name] = int(number)
    return limits


def connect(args: argparse.Namespace, data_dir: Path) -> Any:
    """The running fleet (never an embedded one: the CLI does not start a fleet by accident)."""
    from tryfleet import cluster
    from tryfleet.fleet import Fleet

    address = getattr(args, "address", None)
    if address is None:
        address = cluster.running_address(data_dir)
        if address is None:
            raise cluster.FleetError(FLEET_DOWN)
    cluster.init(address)
    return Fleet(data_dir, embedded=False)


def up(args: argparse.Namespace, data_dir: Path) -> int:
    from tryfleet import cluster

    try:
        limits = parse_limits(args.limit)
        from tryfleet.nodeagent.node import PoolTarget

        for target in args.pool:
            PoolTarget.parse(target)  # a typo fails here, before anything starts
        if args.address:
            cluster.join(args.address)
            address = args.address
        else:
            address = cluster.start_head(data_dir, bind=args.bind, port=args.port,
                                         autoscaling_config=args.autoscaling_config)
        cluster.init(address)
        cluster.ensure_actors(data_dir, host=args.host or socket.gethostname(), limits=limits,
                              pool=tuple(args.pool))
        from tryfleet.fleet import Fleet

        status = Fleet(data_dir, embedded=False).status()
    except (cluster.FleetError, ValueError, BadRequest) as err:
        return error(str(err))
    hosts = ", ".join(h["host"] for h in status["hosts"] if not h["lost"]) or "none yet"
    print(f"tryfleet is up: Ray at {address}, scheduler pid {status['pid']}, hosts: {hosts}")
    print(f"ledger: {status['ledger']}")
    print("next: tryfleet batch SPECS.jsonl --suite NAME, tryfleet status, tryfleet down")
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
    from tryfleet import cluster

    try:
        st = connect(args, data_dir).status()
    except cluster.FleetError as err:
        return error(str(err))
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"scheduler pid {st['pid']}, ledger {st['ledger']}, in flight {st['in_flight']}")
    print("hosts:")
    for h in st["hosts"]:
        mark = "LOST" if h["lost"] else ("pressured" if h["pressured"] else "ok")
        print(f"  {h['host']:<20} {mark:<10} accel {h['accel']}  running {h['running']}  "
              f"capacity {h['cpus']} cpus / {h['mem_mib']} MiB  images {h['images']}")
    if st["limits"]:
        print("limits: " + ", ".join(f"{k}={v}" for k, v in st["limits"].items()))
    print("suites:")
    for suite, counts in sorted(st["suites"].items()):
        print(f"  {suite:<20} " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m"


def ps(args: argparse.Namespace, data_dir: Path) -> int:
    from tryfleet import cluster

    try:
        rows = connect(args, data_dir)._call("ps", args.all, args.limit)
    except cluster.FleetError as err:
        return error(str(err))
    print(f"{'ID':<24} {'SUITE':<16} {'TENANT':<10} {'STATE':<12} {'HOST':<16} {'TRY':>3} "
          f"{'EXIT':>4} {'RUNNING':>7}")
    for r in rows:
        exit_code = "" if r["exit_code"] is None else r["exit_code"]
        print(f"{r['id']:<24} {r['suite']:<16} {r['tenant']:<10} {r['state']:<12} "
              f"{(r['host'] or '-'):<16} {r['attempts']:>3} {exit_code:>4} "
              f"{_age(r['started_at']):>7}")
    return 0


def logs(args: argparse.Namespace, data_dir: Path) -> int:
    from tryfleet import cluster

    try:
        fleet = connect(args, data_dir)
        where = fleet.where(args.id)
        if where is None:
            return error(f"no iteration {args.id!r} in the ledger (see `tryfleet ps --all`)", 2)
        result = fleet.result(args.id)
        if result is None:  # still running: what it has printed so far, from its host
            out = fleet.output(where["host"], args.id, where["attempt"]) \
                if where["host"] else None
            print(f"# {args.id}: {where['state']} on {where['host'] or '-'} "
                  f"(attempt {where['attempt']}, trace {where['trace_id']})", file=sys.stderr)
            if out:
                sys.stdout.buffer.write(out.stdout)
                sys.stderr.buffer.write(out.stderr)
            return 0
        attempts = fleet._call("attempts", args.id)
    except cluster.FleetError as err:
        return error(str(err))
    print(f"# {result.id}: {result.state} exit {result.exit_code} on {result.host} after "
          f"{result.attempts} attempt(s), trace {result.trace_id}", file=sys.stderr)
    for a in attempts:
        print(f"#   attempt {a['attempt']} on {a['host']}: {a['outcome']}"
              f"{' - ' + a['error'] if a['error'] else ''}", file=sys.stderr)
    if result.error:
        print(f"# error: {result.error}", file=sys.stderr)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return 0


def cancel(args: argparse.Namespace, data_dir: Path) -> int:
    from tryfleet import cluster

    chosen = [x for x in (args.id, args.suite, args.tenant, args.all or None) if x]
    if len(chosen) != 1:
        return error("cancel takes exactly one of: ID, --suite S, --tenant T, --all", 2)
    try:
        got = connect(args, data_dir).cancel(args.id, args.suite, args.tenant, args.all)
    except cluster.FleetError as err:
        return error(str(err))
    print(f"cancelled {got['queued_cancelled']} queued; stopping {got['running_stopped']} "
          "running (their VMs are destroyed)")
    return 0
