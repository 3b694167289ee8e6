"""`tryfleet run` through the fleet: submitted to the scheduler (so it is in the ledger, admitted
and placed like any iteration), its output streamed live from the host that runs it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tryfleet.nodeagent import IterationSpec

from .common import EXIT_INFRA, EXIT_INTERRUPTED, EXIT_TIMEOUT, error
from .fleetcmds import connect


def run_in_fleet(args: argparse.Namespace, data_dir: Path, spec: IterationSpec) -> int:
    import ray

    from tryfleet import cluster
    from tryfleet.scheduler.records import TERMINAL, InvalidIteration, Iteration

    try:
        it = Iteration(image=spec.image, command=spec.argv, env=dict(spec.env), cwd=spec.cwd,
                       files={p: d.decode("utf-8", "surrogateescape") for p, d in spec.put},
                       timeout_s=spec.timeout_s, cpus=spec.cpus, mem_mib=spec.mem_mib,
                       disk_mib=spec.disk_mib)
        fleet = connect(args, data_dir)
        (iid,) = fleet.submit([it], suite=args.suite)
    except (cluster.FleetError, InvalidIteration) as err:
        return error(str(err), 2 if isinstance(err, InvalidIteration) else EXIT_INFRA)
    offsets = [0, 0]
    try:
        while True:
            where = fleet.where(iid)
            ended = where is not None and where["state"] in TERMINAL
            result = fleet.result(iid) if ended else None  # the whole output: only once ended
            if (where and where["host"] and where["state"] in ("RUNNING", "PLACED")) or result:
                host = (result.host if result else None) or (where or {}).get("host")
                attempt = (where or {}).get("attempt", 0)
                if host:
                    try:
                        got = fleet.output(host, iid, attempt, *offsets)
                    except (ValueError, ray.exceptions.RayError):
                        got = None
                    if got is not None:
                        sys.stdout.buffer.write(got.stdout)
                        sys.stdout.flush()
                        sys.stderr.buffer.write(got.stderr)
                        sys.stderr.flush()
                        offsets[0] += len(got.stdout)
                        offsets[1] += len(got.stderr)
            if result is not None:
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        fleet.cancel(iid)
        return error(f"interrupted; iteration {iid} cancelled and its VM destroyed",
                     EXIT_INTERRUPTED)
    if offsets == [0, 0]:  # its host is gone; the ledger has the (capped) output
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
    if result.state == "TIMED_OUT":
        return error(f"timed out after {spec.timeout_s:g}s; the command was killed and the VM "
                     f"destroyed (iteration {iid})", EXIT_TIMEOUT)
    if result.state in ("INFRA_ERROR", "CANCELLED"):
        return error(f"{result.state.lower().replace('_', ' ')}: {result.error} "
                     f"(iteration {iid}, `tryfleet logs {iid}`)", EXIT_INFRA)
    return int(result.exit_code if result.exit_code is not None else 128)
