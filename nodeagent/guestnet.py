"""The network of a guest granted egress: one NIC, whose only way out is the node's proxy.

The guest's NIC is a tap device that the node makes before the VM starts (libvirt opens it,
managed='no') and moves, as soon as the VM is created, into a network namespace of that guest's
own: `tfeg-<owner>-<n>`, holding only `lo` and the tap. There the tap has 10.0.2.2 (the
guest's gateway) and 10.0.2.100, where a relay (socat, forking one child per connection)
listens on port 3128 and hands each connection to the node's egress proxy on its unix socket
(`<data>/egress/<vm>.sock`, root's only). Nothing else in that namespace listens and it has no
route anywhere, so a guest that ignores HTTP_PROXY, or sends raw packets, reaches nothing: not
the host's ports (Ray's, the API's, sshd), not its addresses, not 169.254.169.254.

Why not QEMU's user-mode network with restrict=on and a guestfwd to socat: libvirt starts QEMU
with `-sandbox ...,spawn=deny`, and a guestfwd `cmd:` is a fork and exec inside QEMU, which that
seccomp filter kills (measured: the guest crashes at its first connection to the proxy).

Everything here runs `ip` and `socat` as root, as the node agent does. Namespaces and taps of an
owner that is gone are removed by `reap_networks` (the reaper calls it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import HypervisorError
from .hypervisor import DOMAIN_PREFIX, EGRESS_PROXY

NETNS_PREFIX = "tfeg-"
TAP_PREFIX = "tf"  # + owner id (8 hex) + the seq in base 36: at most 15 characters (IFNAMSIZ)
GATEWAY = "10.0.2.2/24"
PROXY_HOST, _, _PORT = EGRESS_PROXY.partition(":")
PROXY_PORT = int(_PORT)
READY_TIMEOUT_S = 10.0
# Connections relayed at once per guest (a child process each): the proxy itself takes at most
# 32 per VM, so this only bounds what a guest opening connections in a loop costs the host.
MAX_RELAYED = 64
IP_TIMEOUT_S = 10.0


def _ip(*args: str) -> None:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HypervisorError(f"`ip {' '.join(args)}` failed: {err} (install iproute2: "
                              "scripts/setup.sh)") from err
    if r.returncode != 0:
        raise HypervisorError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, rem = divmod(n, 36)
        out = digits[rem] + out
        if n == 0:
            return out


def _listening(pid: int) -> bool:
    """Whether process `pid` (in the guest's namespace) listens on the proxy's address."""
    address = int.from_bytes(bytes(map(int, PROXY_HOST.split("."))), "little")
    want = f"{address:08X}:{PROXY_PORT:04X}"
    try:
        with open(f"/proc/{pid}/net/tcp") as fh:
            return any(f.split()[1] == want and f.split()[3] == "0A" for f in fh.readlines()[1:])
    except (OSError, IndexError):
        return False


class GuestNet:
    """The tap and namespace of one guest: `make` before the VM starts, `isolate` right after
    it was created, `remove` when it is destroyed (idempotent)."""

    def __init__(self, owner: str, seq: int, proxy_socket: Path) -> None:
        self.tap = f"{TAP_PREFIX}{owner}{_base36(seq)}"
        self.netns = f"{NETNS_PREFIX}{owner}-{seq}"
        self.proxy_socket = proxy_socket
        self.relay: subprocess.Popen[bytes] | None = None
        if not re.fullmatch(r"[0-9a-f]{8}", owner) or len(self.tap) > 15:
            raise HypervisorError(f"no tap name for owner {owner!r} and VM {seq}")

    @classmethod
    def of(cls, domain: str, proxy_socket: Path) -> GuestNet:
        """The network of domain `tryfleet-<owner>-<n>` (the reaper finds it by the owner)."""
        found = re.fullmatch(rf"{DOMAIN_PREFIX}([0-9a-f]{{8}})-(\d+)", domain)
        if found is None:
            raise HypervisorError(f"domain {domain} cannot be granted egress: only VMs named "
                                  f"{DOMAIN_PREFIX}<owner>-<n> are (never restored ones)")
        return cls(found.group(1), int(found.group(2)), proxy_socket)

    def make(self) -> None:
        """The tap, down, in the host's namespace (where libvirt opens it)."""
        _ip("tuntap", "add", "dev", self.tap, "mode", "tap")

    def isolate(self, should_stop: Callable[[], bool] | None = None) -> None:
        """The tap moved into the guest's own namespace, addressed, and the relay to the
        proxy listening there. HypervisorError when any step fails."""
        socat = shutil.which("socat")
        if socat is None:
            raise HypervisorError("socat is not installed; a guest granted egress reaches the "
                                  "proxy through it: install it (scripts/setup.sh)")
        _ip("netns", "add", self.netns)
        _ip("link", "set", "dev", self.tap, "netns", self.netns)
        for args in (("link", "set", "dev", self.tap, "addrgenmode", "none"),
                     ("link", "set", "dev", "lo", "up"),
                     ("addr", "add", GATEWAY, "dev", self.tap),
                     ("addr", "add", f"{PROXY_HOST}/32", "dev", self.tap),
                     ("link", "set", "dev", self.tap, "up")):
            _ip("-n", self.netns, *args)
        self.relay = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, socat,
             f"TCP-LISTEN:{PROXY_PORT},bind={PROXY_HOST},reuseaddr,fork,"
             f"max-children={MAX_RELAYED}",
             f"UNIX-CONNECT:{self.proxy_socket}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _listening(self.relay.pid):
            if self.relay.poll() is not None:
                raise HypervisorError(f"the egress relay of {self.netns} exited with "
                                      f"{self.relay.returncode} before it listened")
            if time.monotonic() > deadline or (should_stop is not None and should_stop()):
                raise HypervisorError(f"the egress relay of {self.netns} did not listen on "
                                      f"{EGRESS_PROXY} within {READY_TIMEOUT_S:g} s")
            time.sleep(0.005)  # socat starts in milliseconds; nothing else signals it

    def remove(self) -> None:
        """The relay and its children killed, the namespace and the tap deleted."""
        if self.relay is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.relay.pid, signal.SIGKILL)
            self.relay.wait()
            self.relay = None
        _remove(self.netns, self.tap)


def _remove(netns: str, tap: str) -> None:
    for pid in _netns_pids(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    steps = [("-n", netns, "link", "del", tap), ("link", "del", tap)] if tap else []
    for args in (*steps, ("netns", "del", netns)):
        with contextlib.suppress(HypervisorError):  # gone already: nothing to remove
            _ip(*args)


def _netns_pids(netns: str) -> list[int]:
    try:
        out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                             timeout=IP_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def _names(args: Sequence[str], pattern: str) -> list[str]:
    try:
        out = subprocess.run(["ip", *args], capture_output=True, text=True,
                             timeout=IP_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return re.findall(pattern, out, re.MULTILINE)


def reap_networks(gone: Callable[[str], bool]) -> list[str]:
    """Remove the namespaces (and their relays) and taps of owners for which gone(owner) is
    true; the names removed."""
    removed = []
    for netns in _names(("netns", "list"), rf"^({NETNS_PREFIX}[0-9a-f]+-\d+)"):
        owner = netns[len(NETNS_PREFIX):].split("-", 1)[0]
        if gone(owner):
            _remove(netns, "")
            removed.append(netns)
    for tap in _names(("-o", "link", "show", "type", "tun"),
                      rf"^\d+: ({TAP_PREFIX}[0-9a-f]{{8}}[0-9a-z]+)"):
        if gone(tap[len(TAP_PREFIX):len(TAP_PREFIX) + 8]):
            with contextlib.suppress(HypervisorError):
                _ip("link", "del", tap)
            removed.append(tap)
    return removed


__all__ = ["NETNS_PREFIX", "TAP_PREFIX", "GuestNet", "reap_networks"]
