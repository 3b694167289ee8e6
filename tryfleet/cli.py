"""The `tryfleet` command: argument parsing and dispatch; each command lives in commands/."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from nodeagent import default_data_dir

from . import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tryfleet", description=__doc__)
    p.add_argument("--version", action="version", version=f"tryfleet {__version__}")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where images, overlays and logs live (default: $TRYFLEET_DATA "
                        "or /var/lib/tryfleet)")
    p.add_argument("--uri", default="qemu:///system", help="libvirt connection URI")
    p.add_argument("-v", "--verbose", action="store_true", help="log what the node agent does")
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
    run.add_argument("argv", nargs=argparse.REMAINDER, help="the command, after --")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    data_dir = args.data_dir or default_data_dir()
    if args.command == "image":
        from images.cli import cmd_build, cmd_ls

        if args.image_command == "build":
            return cmd_build(args.name, data_dir, args.force)
        return cmd_ls(data_dir, args.json)
    if args.command == "host":
        from .commands import host

        return host.info(data_dir, args.uri, args.json) if args.host_command == "info" \
            else host.reap(data_dir, args.uri)
    from .commands import run

    return run.run(args, data_dir)


if __name__ == "__main__":
    sys.exit(main())
