"""`tryfleet run`: one command in a fresh VM, output streamed live, the VM gone afterwards:
through the fleet's API when a fleet is up (or named with --url), else on this host (the fleet
side, imported only then)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tryfleet.local import needs_fleet_side
from tryfleet.wire import IterationSpec, State

from .common import (
    EXIT_INFRA,
    EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    api_url,
    error,
    open_node,
)

if TYPE_CHECKING:
    from tryfleet.nodeagent import IterationOutcome


class UsageError(ValueError):
    pass


def _pairs(values: list[str], flag: str, what: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        left, sep, right = value.rpartition(":") if flag == "--get" else value.partition(":")
        if not sep or not left or not right:
            raise UsageError(f"{flag} {value!r}: expected {what}")
        out.append((left, right))
    return out


def build_spec(args: argparse.Namespace) -> IterationSpec:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given: put it after --, e.g. "
                         "`tryfleet run --image base -- python3 -c 'print(6*7)'`")
    if args.cpus < 1 or args.mem_mib < 128 or args.timeout_s <= 0:
        raise UsageError("--cpus must be >= 1, --mem-mib >= 128 and --timeout-s > 0")
    env = []
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        env.append((key, value))
    puts = []
    for local, remote in _pairs(args.put, "--put", "LOCAL:REMOTE"):
        if not remote.startswith("/"):
            raise UsageError(f"--put {local}:{remote}: the guest path must be absolute")
        try:
            puts.append((remote, Path(local).read_bytes()))
        except OSError as err:
            raise UsageError(f"--put {local}:{remote}: cannot read {local}: "
                             f"{err.strerror}") from err
    gets = _pairs(args.get, "--get", "REMOTE:LOCAL")
    for remote, _ in gets:
        if not remote.startswith("/"):
            raise UsageError(f"--get {remote}: the guest path must be absolute")
    stdin = None
    if args.stdin == "-":
        stdin = sys.stdin.buffer.read()
    elif args.stdin:
        try:
            stdin = Path(args.stdin).read_bytes()
        except OSError as err:
            raise UsageError(f"--stdin {args.stdin}: {err.strerror}") from err
    return IterationSpec(
        image=args.image, argv=tuple(argv), env=tuple(env), cwd=args.cwd, stdin=stdin,
        put=tuple(puts), get=tuple(r for r, _ in gets), timeout_s=args.timeout_s,
        cpus=args.cpus, mem_mib=args.mem_mib, disk_mib=args.disk_mib,
    )


def _write(stream: int, data: bytes) -> None:
    out = sys.stdout.buffer if stream == 1 else sys.stderr.buffer
    out.write(data)
    out.flush()


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, data_dir: Path) -> int:
    try:
        spec = build_spec(args)
    except UsageError as err:
        return error(str(err), 2)
    gets = _pairs(args.get, "--get", "REMOTE:LOCAL")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # --get and --stdin have no counterpart in a fleet iteration: those run here.
    if not args.local and not gets and spec.stdin is None and \
            api_url(args, data_dir) is not None:
        from .runfleet import run_in_fleet

        return run_in_fleet(args, data_dir, spec)
    why = needs_fleet_side("running here (no fleet is up here, and no --url was given)"
                           if not args.local else "`tryfleet run --local`")
    if why is not None:
        return error(why, EXIT_INFRA)
    return _run_here(args, data_dir, spec, gets)


def _run_here(args: argparse.Namespace, data_dir: Path, spec: IterationSpec,
              gets: list[tuple[str, str]]) -> int:
    from tryfleet.images import ImageError
    from tryfleet.nodeagent import BadRequest, NodeAgentError, SandboxSpec, read_capacity
    from tryfleet.nodeagent.node import check_sizes

    try:  # before any VM: what this host can never give is a usage error
        check_sizes(SandboxSpec(spec.image, spec.cpus, spec.mem_mib, spec.disk_mib),
                    read_capacity(data_dir))
    except BadRequest as err:
        return error(str(err), EXIT_USAGE)
    try:
        node = open_node(data_dir, args.uri)
    except NodeAgentError as err:
        return error(str(err))
    try:
        outcome = node.run_iteration(spec, on_output=_write)
    except (ImageError, BadRequest) as err:
        return error(str(err), EXIT_USAGE if isinstance(err, BadRequest) else EXIT_INFRA)
    except KeyboardInterrupt:
        return error("interrupted; the VM was destroyed", EXIT_INTERRUPTED)
    finally:
        node.close()
    fetched = dict(outcome.files)
    for remote, local in gets:
        if remote in fetched:
            Path(local).write_bytes(fetched[remote])
    return _report(outcome, spec.timeout_s)


def _report(outcome: IterationOutcome, timeout_s: float) -> int:
    for name, flag in (("stdout", outcome.stdout_truncated), ("stderr", outcome.stderr_truncated)):
        if flag:
            print(f"tryfleet: {name} was cut at the output cap", file=sys.stderr)
    kept = f" (console log and domain XML kept in {outcome.kept_logs})" if outcome.kept_logs else ""
    if outcome.error and outcome.state is not State.INFRA_ERROR:
        print(f"tryfleet: {outcome.error}", file=sys.stderr)
    if outcome.state is State.TIMED_OUT:
        return error(f"timed out after {timeout_s:g}s; the command was killed and "
                     f"the VM destroyed{kept}", EXIT_TIMEOUT)
    if outcome.state is State.INFRA_ERROR:
        return error(f"infrastructure error: {outcome.error}{kept}", EXIT_INFRA)
    if outcome.signal is not None:
        name = signal.Signals(outcome.signal).name if outcome.signal in signal.valid_signals() \
            else str(outcome.signal)
        print(f"tryfleet: command killed by {name}", file=sys.stderr)
        return 128 + outcome.signal
    return int(outcome.exit_code or 0)


__all__ = ["build_spec", "run"]
