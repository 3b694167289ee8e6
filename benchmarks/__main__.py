"""python -m benchmarks NAME [--json] [--save DIR] [--quick] [--real] [--attach DATA_DIR]

Exits 0, or 1 when the scenario defines `failed(result)` and it says so (soak's checks)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from .common import finish

SCENARIOS = {
    "clone": "our copy-on-write clone vs qemu-img create",
    "binpack": "hosts our placement fills vs Ray's default, same mix",
    "dispatch": "iterations/s through the scheduler vs a Ray task per iteration",
    "acquire": "ready-to-exec latency: pool hit, snapshot restore, cold boot",
    "exec": "round trip of a command in a ready VM",
    "suites50": "50 suites at once on this host: throttled vs everything admitted at once",
    "campaign": "a small pytest suite N times: pooled+restore vs a fresh boot each",
    "soak": "the scheduler under chaos (processes killed, hosts removed): nothing lost",
    "audit": "audit trail: append latency under concurrent appends, verify records/s",
    "api": "the HTTP API against the in-cluster path: exec, sandbox create, status, SSE",
    "hostile": "a neighbour's exec latency beside fork, memory and output bombs vs quiet",
}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("name", choices=sorted(SCENARIOS), help="scenario to run")
    p.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    p.add_argument("--save", type=Path, default=None,
                   help="also write NAME.json (and the chart, NAME.png) into DIR")
    p.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    p.add_argument("--real", action="store_true",
                   help="soak: real VMs on this host instead of simulated hosts")
    p.add_argument("--attach", type=Path, default=None, metavar="DATA_DIR",
                   help="api: measure the fleet `tryfleet up` started with this data dir "
                        "instead of starting one")
    args = p.parse_args()
    module = importlib.import_module(f"benchmarks.{args.name}")
    result = module.run(args)
    chart = getattr(module, "CHART", None)
    finish(args.name, result, args.json, args.save, chart, f"{args.name}: {SCENARIOS[args.name]}")
    failed = getattr(module, "failed", None)
    return 1 if failed is not None and failed(result) else 0


if __name__ == "__main__":
    sys.exit(main())
