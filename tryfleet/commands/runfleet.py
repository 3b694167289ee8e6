"""`tryfleet run` through the fleet's API: submitted like any iteration (so it is in the ledger,
admitted and placed), its output streamed live (server-sent events) from the host that runs it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tryfleet.errors import TryfleetError
from tryfleet.scheduler.records import Iteration, Result
from tryfleet.wire import IterationSpec

from .common import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_TIMEOUT, connect, error, failed


def iteration_of(spec: IterationSpec) -> Iteration:
    """The fleet's iteration for what `tryfleet run` was given; files go byte for byte."""
    return Iteration(image=spec.image, command=spec.argv, env=dict(spec.env), cwd=spec.cwd,
                     files=dict(spec.put), timeout_s=spec.timeout_s, cpus=spec.cpus,
                     mem_mib=spec.mem_mib, disk_mib=spec.disk_mib)


def run_in_fleet(args: argparse.Namespace, data_dir: Path, spec: IterationSpec) -> int:
    try:
        fleet = connect(args, data_dir)
        (iid,) = fleet.submit([iteration_of(spec)], suite=args.suite)
    except TryfleetError as err:
        return failed(err)
    result: Result | None = None
    try:
        for item in fleet.follow(iid):
            if isinstance(item, Result):
                result = item
                continue
            stream = sys.stdout.buffer if item[0] == "stdout" else sys.stderr.buffer
            stream.write(item[1])
            stream.flush()
    except KeyboardInterrupt:
        fleet.cancel(iid)
        return error(f"interrupted; iteration {iid} cancelled and its VM destroyed",
                     EXIT_INTERRUPTED)
    except TryfleetError as err:
        return error(f"{err} (iteration {iid} goes on in the fleet: `tryfleet logs {iid}`)")
    assert result is not None
    return _exit_code(result, iid, spec.timeout_s)


def _exit_code(result: Result, iid: str, timeout_s: float) -> int:
    for name, flag in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)):
        if flag:
            print(f"tryfleet: {name} was cut at the output cap", file=sys.stderr)
    if result.state == "TIMED_OUT":
        return error(f"timed out after {timeout_s:g}s; the command was killed and the VM "
                     f"destroyed (iteration {iid})", EXIT_TIMEOUT)
    if result.state in ("INFRA_ERROR", "CANCELLED"):
        return error(f"{result.state.lower().replace('_', ' ')}: {result.error} "
                     f"(iteration {iid}, `tryfleet logs {iid}`)", EXIT_INFRA)
    return int(result.exit_code if result.exit_code is not None else 128)


__all__ = ["iteration_of", "run_in_fleet"]
