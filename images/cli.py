"""`tryfleet image build NAME` and `tryfleet image ls`; wired into argparse by tryfleet/cli.py."""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .builder import build
from .errors import ImageError
from .store import BuiltImage, ImageStore


def cmd_build(name: str, data_dir: Path, force: bool) -> int:
    """Progress on stderr; the result as one line on stdout: NAME DIGEST SIZE PATH."""
    store = ImageStore(data_dir)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        image = build(name, store, force=force, progress=_progress)
    except ImageError as err:
        print(f"tryfleet: image build {name}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tryfleet: image build {name}: interrupted; nothing was kept", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(f"{image.name}  {image.digest[:12]}  {human_bytes(image.size_bytes)}  {image.path}")
    return 0


def cmd_ls(data_dir: Path, as_json: bool) -> int:
    try:
        images = ImageStore(data_dir).list()
    except (ImageError, OSError) as err:
        print(f"tryfleet: image ls: cannot read {data_dir}: {err}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps([image_record(i) for i in images], indent=2))
        return 0
    if not images:
        print(f"no images built in {data_dir}; run `tryfleet image build base`", file=sys.stderr)
        return 0
    rows = [("NAME", "DIGEST", "SIZE", "BUILT")]
    rows += [(i.name, i.digest[:12], human_bytes(i.size_bytes), _short_time(i.built_at))
             for i in images]
    widths = [max(len(row[col]) for row in rows) for col in range(3)]
    for name, digest, size, built in rows:
        print(f"{name:<{widths[0]}}  {digest:<{widths[1]}}  {size:<{widths[2]}}  {built}")
    return 0


def image_record(image: BuiltImage) -> dict[str, Any]:
    record = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(image).items()}
    record["path"] = str(image.path)
    return record


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit in ("B", "KiB") else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _short_time(iso: str) -> str:
    """2025-11-21T19:30:05Z -> 2025-11-21 19:30Z."""
    return iso[:16].replace("T", " ") + ("Z" if iso.endswith(("Z", "+00:00")) else "")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds the build like Ctrl-C, so its scratch directories are removed."""
    raise KeyboardInterrupt


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
