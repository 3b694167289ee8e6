"""The `tryfleet` command: argument parsing and dispatch; each command lives in commands/."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .local import default_data_dir, needs_fleet_side
from .logs import ENV_FORMAT, ENV_LEVEL, FORMATS, LEVELS, configure

DESCRIPTION = ("tryfleet runs commands in throwaway micro-VMs, one on this host or thousands "
               "on a fleet of hosts.")

EPILOG = """\
main commands:
  tryfleet image build base              build the base image (once; cached)
  tryfleet run --image base -- CMD ...   run CMD in a fresh VM, exit with its exit code
  tryfleet up                            start a fleet on this host (Ray, node agent, scheduler)
  tryfleet batch SPECS.jsonl --suite S   run a file of iterations on the fleet
  tryfleet status | ps | logs ID         watch the fleet and what runs on it
  tryfleet cancel ID | --suite S | --all stop the iterations there are now
  tryfleet key create --tenant T         make an API key (also: key ls, key revoke ID)
  tryfleet freeze|kill --tenant T        kill switches, kept until `tryfleet thaw` (also
                                         --iteration --sandbox --suite --key --host --all)
  tryfleet secret set --tenant T NAME    store a secret, its value from stdin (also: ls, rm)
  tryfleet mcp                           MCP tools over stdio, for an agent's MCP client
  tryfleet down                          stop what `tryfleet up` started

Commands that use a fleet reach it over its HTTP API: the one `tryfleet up` started on this
host (with the local admin key it left), or --url and --api-key (or TRYFLEET_URL and
TRYFLEET_API_KEY).

`tryfleet COMMAND --help` describes each command. README.md, at the top of the tryfleet
source tree, covers set-up, the fleet, the Python SDK and the exit codes."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tryfleet", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"tryfleet {__version__}")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where images, overlays and logs live (default: $TRYFLEET_DATA "
                        "or /var/lib/tryfleet)")
    p.add_argument("--uri", default="qemu:///system", help="libvirt connection URI")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log what the node agent does, and each API request with its id")
    p.add_argument("--log-format", choices=FORMATS, default=None,
                   help="log lines as JSON objects (one a line) or as text for people "
                        "(default: $TRYFLEET_LOG_FORMAT, else text on a terminal and json "
                        "otherwise); `tryfleet up` passes it on to the fleet's processes, "
                        "whose default is json")
    p.add_argument("--log-level", choices=LEVELS, default=None,
                   help="log this and more severe (default: $TRYFLEET_LOG_LEVEL, else info "
                        "with -v and warning without); passed on as --log-format is")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    image = sub.add_parser("image", help="build and list golden images")
    isub = image.add_subparsers(dest="image_command", metavar="ACTION")
    isub.required = True
    build = isub.add_parser("build", help="build an image from its recipe (cached by digest)")
    build.add_argument("name", help="recipe name, e.g. base")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ls = isub.add_parser("ls", help="list built images")
    ls.add_argument("--json", action="store_true", help="print JSON")

    host = sub.add_parser("host", help="this host: capacity, pressure, accelerator")
    hsub = host.add_subparsers(dest="host_command", metavar="ACTION")
    hsub.required = True
    info = hsub.add_parser("info", help="capacity, pressure and whether VMs run under kvm or tcg")
    info.add_argument("--json", action="store_true", help="print JSON")
    hsub.add_parser("reap", help="remove VMs and overlays that crashed runs left behind")

    up = sub.add_parser("up", help="start the fleet: Ray, this host's node agent, the scheduler")
    up.add_argument("--address", default=None,
                    help="join the Ray cluster at ADDRESS as another host instead of starting one")
    up.add_argument("--bind", default=None,
                    help="the address Ray listens on (default: this host's own; Ray's token "
                         "authentication is always on, since its ports run code)")
    up.add_argument("--port", type=int, default=6390, help="Ray's port on the head (default 6390)")
    up.add_argument("--api-listen", default="127.0.0.1:8470", metavar="HOST:PORT",
                    help="where the HTTP API listens (default 127.0.0.1:8470: this host only)")
    up.add_argument("--autoscaling-config", default=None,
                    help="passed to `ray start --head` (the cluster launcher gives one)")
    up.add_argument("--host", default=None,
                    help="this host's name in the fleet (default: hostname)")
    up.add_argument("--limit", action="append", default=[], metavar="NAME=N",
                    help="shared-resource limit, fleet-wide, e.g. ci-db=8")
    up.add_argument("--pool", action="append", default=[], metavar="IMAGE[:CPUSxMEM]=N",
                    help="keep N VMs of this image and size ready on this host, e.g. base=2 "
                         "(pools also grow with demand, within a quarter of the host's memory)")
    sub.add_parser("down", help="stop what `tryfleet up` started, and nothing else")
    from .commands import audit  # its parser: ls, trace, verify, export

    audit.add_parser(sub)
    from .commands import secrets  # its parser: set, ls, rm

    secrets.add_parser(sub, _api_flags)
    status = sub.add_parser("status", help="hosts, limits and iteration counts")
    status.add_argument("--json", action="store_true", help="print JSON")
    ps = sub.add_parser("ps", help="iterations that are queued or running")
    ps.add_argument("--all", action="store_true", help="finished ones too")
    ps.add_argument("--limit", type=int, default=200, help="at most this many rows")
    logs = sub.add_parser("logs", help="an iteration's output, attempts and errors")
    logs.add_argument("id")
    cancel = sub.add_parser("cancel", help="cancel an iteration, a suite, a tenant, or --all")
    cancel.add_argument("id", nargs="?")
    cancel.add_argument("--suite")
    cancel.add_argument("--tenant")
    cancel.add_argument("--all", action="store_true", help="the kill switch: everything")
    batch = sub.add_parser("batch", help="run a JSONL file of iterations as one suite")
    batch.add_argument("specs", help="JSONL: one iteration per line (see README)")
    batch.add_argument("--suite", required=True)
    batch.add_argument("--tenant", default=None,
                       help="the tenant to run it for (admins; default: the key's)")
    batch.add_argument("--out", default=None, help="write results here as JSONL")
    batch.add_argument("--limit", action="append", default=[], metavar="NAME=N",
                       help="size a shared-resource limit fleet-wide before submitting, e.g. "
                            "ci-db=2 (admins; iterations name the limits they hold in the "
                            "spec file: \"limits\": [\"ci-db\"])")
    batch.add_argument("--max-wall-s", type=float, default=None,
                       help="suite budget: cancel what is left after this many seconds")
    batch.add_argument("--skip-invalid", action="store_true",
                       help="run the valid lines even if some are malformed")
    _key_parser(sub)
    from .commands import switches  # freeze, kill, thaw, switches

    switches.add_parsers(sub, _api_flags)
    mcp = sub.add_parser("mcp", help="serve tryfleet's MCP tools over stdio (an agent's MCP "
                                     "client starts this)")

    run = sub.add_parser(
        "run", help="run one command in a fresh VM and throw the VM away",
        usage="tryfleet run --image NAME [options] -- CMD [ARGS...]")
    run.add_argument("--image", required=True, help="image name (see `tryfleet image ls`)")
    run.add_argument("--cpus", type=int, default=1, help="vCPUs (default 1)")
    run.add_argument("--mem-mib", type=int, default=512, help="guest memory in MiB (default 512)")
    run.add_argument("--disk-mib", type=int, default=None,
                     help="root disk size in MiB (default: the image's size)")
    run.add_argument("--timeout-s", type=float, default=600.0,
                     help="kill the command after this many seconds (default 600)")
    run.add_argument("--put", action="append", default=[], metavar="LOCAL:REMOTE",
                     help="copy a local file into the guest before the command")
    run.add_argument("--get", action="append", default=[], metavar="REMOTE:LOCAL",
                     help="copy a guest file out after the command")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="environment variable for the command")
    run.add_argument("--cwd", default=None, help="working directory in the guest (default /root)")
    run.add_argument("--stdin", default=None, metavar="FILE",
                     help="feed FILE to the command's stdin ('-' for this process's stdin)")
    run.add_argument("--local", action="store_true",
                     help="run on this host directly, even when a fleet is up")
    run.add_argument("--suite", default="run", help="suite name when going through the fleet")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="the command, after --")
    for cmd in (status, ps, logs, cancel, batch, run, mcp):
        _api_flags(cmd)
    return p


def _api_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--url", default=None,
                     help="the fleet's API, e.g. http://HOST:8470 (default: $TRYFLEET_URL, "
                          "else the fleet `tryfleet up` started here)")
    cmd.add_argument("--api-key", default=None,
                     help="API key (default: $TRYFLEET_API_KEY, else this host's local admin "
                          "key)")


def _key_parser(sub: Any) -> None:
    key = sub.add_parser("key", help="API keys: create, ls, revoke (needs an admin key)")
    ksub = key.add_subparsers(dest="key_command", metavar="ACTION")
    ksub.required = True
    create = ksub.add_parser("create", help="make a key; it is printed once, never again")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--scope", action="append", default=[],
                        choices=("sandbox", "batch", "read", "admin", "metrics"),
                        help="what it may do, repeatable (default: sandbox and batch)")
    create.add_argument("--expires", default=None, metavar="DURATION",
                        help="stop working after this long: 30d, 12h, 90m, 3600s")
    create.add_argument("--name", default="", help="what the key is for")
    create.add_argument("--json", action="store_true", help="print JSON (the key included)")
    ls = ksub.add_parser("ls", help="list keys (never their secrets)")
    ls.add_argument("--tenant", default=None, help="only this tenant's")
    ls.add_argument("--json", action="store_true", help="print JSON")
    revoke = ksub.add_parser("revoke", help="revoke a key: refused from its next request on")
    revoke.add_argument("id", help="the key's id (see `tryfleet key ls`)")
    for cmd in (create, ls, revoke):
        _api_flags(cmd)


FLEET_SIDE_COMMANDS = ("image", "host", "up", "down")


def configure_logs(args: argparse.Namespace) -> None:
    """This process's logs (to stderr: `tryfleet mcp` speaks its protocol on stdout), and a
    format or level chosen on the command line kept in the environment, where the fleet's
    actors this process starts (`tryfleet up`) find it (LogSetup.from_env in logs.py)."""
    if args.log_format:
        os.environ[ENV_FORMAT] = args.log_format
    if args.log_level:
        os.environ[ENV_LEVEL] = args.log_level
    fmt = os.environ.get(ENV_FORMAT) or ("text" if sys.stderr.isatty() else "json")
    level = os.environ.get(ENV_LEVEL) or ("info" if args.verbose else "warning")
    configure("cli", fmt, level)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logs(args)
    if args.verbose:
        logging.getLogger("tryfleet.http").setLevel(logging.DEBUG)
    data_dir = args.data_dir or default_data_dir()
    if args.command in FLEET_SIDE_COMMANDS:
        why = needs_fleet_side(f"`tryfleet {args.command}`")
        if why is not None:
            print(f"tryfleet: error: {why}", file=sys.stderr)
            return 125
    if args.command == "image":
        from tryfleet.images.cli import cmd_build, cmd_ls

        if args.image_command == "build":
            return cmd_build(args.name, data_dir, args.force)
        return cmd_ls(data_dir, args.json)
    if args.command == "host":
        from .commands import host

        return host.info(data_dir, args.uri, args.json) if args.host_command == "info" \
            else host.reap(data_dir, args.uri)
    if args.command == "audit":
        from .commands import audit

        return audit.main(args, data_dir)
    if args.command in ("up", "down", "status", "ps", "logs", "cancel"):
        from .commands import fleetcmds

        return int(getattr(fleetcmds, args.command)(args, data_dir))
    if args.command == "batch":
        from .commands import batch

        return batch.batch(args, data_dir)
    if args.command == "secret":
        from .commands import secrets

        return secrets.main(args, data_dir)
    if args.command == "key":
        from .commands import keys

        return keys.key(args, data_dir)
    if args.command in ("freeze", "kill", "thaw", "switches"):
        from .commands import switches

        return switches.main(args, data_dir)
    if args.command == "mcp":
        from .commands import mcp

        return mcp.mcp(args, data_dir)
    from .commands import run

    return run.run(args, data_dir)


if __name__ == "__main__":
    sys.exit(main())
