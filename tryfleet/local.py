"""What a client finds on this host without the fleet side: the data directory, the fleet
`tryfleet up` started here (its up.json: the Ray address and the API's URL) and the local admin
key it left (admin.key, mode 0600). Imports neither Ray nor psutil nor libvirt: the CLI and
`tryfleet.connect()` read these on a light install too."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path
from typing import Any

from tryfleet.errors import AccessDenied

DEFAULT_DATA_DIR = Path("/var/lib/tryfleet")  # as tryfleet.nodeagent.node's
STATE_FILE = "up.json"
ADMIN_KEY_FILE = "admin.key"  # as tryfleet.gateway.keys'
FLEET_SIDE = ("ray", "libvirt", "psutil")  # what the fleet side imports that a client lacks
FLEET_SIDE_HINT = "pip install 'tryfleet[fleet]'"


def default_data_dir() -> Path:
    return Path(os.environ.get("TRYFLEET_DATA") or DEFAULT_DATA_DIR)


def fleet_side_missing() -> list[str]:
    """The packages of the fleet side (`tryfleet[fleet]`) that are not installed."""
    return [name for name in FLEET_SIDE if importlib.util.find_spec(name) is None]


def needs_fleet_side(what: str) -> str | None:
    """What to say when `what` cannot work on this install; None when it can."""
    missing = fleet_side_missing()
    if not missing:
        return None
    return (f"{what} needs the fleet side, which is not installed here ({', '.join(missing)} "
            f"missing): {FLEET_SIDE_HINT}")


def state(data_dir: Path) -> dict[str, Any] | None:
    """What `tryfleet up` recorded in data_dir (up.json), if anything."""
    try:
        got = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def head_alive(address: str) -> bool:
    """Whether something listens at Ray's HOST:PORT."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def running(data_dir: Path) -> dict[str, Any] | None:
    """up.json of the fleet `tryfleet up` started here, if its Ray head is still up."""
    st = state(data_dir)
    address = st.get("address") if st is not None else None
    return st if isinstance(address, str) and head_alive(address) else None


def api_url(data_dir: Path) -> str | None:
    """The API's URL of the fleet `tryfleet up` started here, if it is still up."""
    st = running(data_dir)
    url = st.get("api_url") if st is not None else None
    return url if isinstance(url, str) else None


def admin_key(data_dir: Path) -> str | None:
    """The local admin key `tryfleet up` left in data_dir; None if there is none. AccessDenied,
    saying what to do, when it is there but this user may not read it."""
    path = data_dir / ADMIN_KEY_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except PermissionError:
        raise AccessDenied(f"cannot read the local admin key {path} (it is for the user who "
                           "ran `tryfleet up`): run as that user, or use a key of your own "
                           "(TRYFLEET_API_KEY, or --api-key; an admin makes one with "
                           "`tryfleet key create --tenant T`)") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (a gateway restarted by Ray listens on it again,
    where port 0 would give it another one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = ["ADMIN_KEY_FILE", "DEFAULT_DATA_DIR", "FLEET_SIDE_HINT", "STATE_FILE", "admin_key",
           "api_url", "default_data_dir", "fleet_side_missing", "free_port", "head_alive",
           "needs_fleet_side", "running", "state"]
