"""A network of a test's own to fetch from: a network namespace `tf-test-<pid>` joined to this
host by a veth pair (host 198.51.100.1/24, namespace 198.51.100.2/24, a documentation range),
with `python3 -m http.server 80` serving in it. Everything is removed afterwards, also when the
test failed. No traffic leaves this host."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.waiting import until

HOST_ADDRESS = "198.51.100.1"
SERVER_ADDRESS = "198.51.100.2"
PAGE = "hello from the test network\n"


@dataclass(frozen=True)
class ServedNet:
    netns: str
    address: str  # where the server listens, port 80
    page: str  # what GET / answers


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _serving(address: str) -> bool:
    try:
        with socket.create_connection((address, 80), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def served_network() -> Iterator[ServedNet]:
    pid = os.getpid()
    netns, host_if, ns_if = f"tf-test-{pid}", f"tfth{pid}", f"tftn{pid}"
    www = Path(tempfile.mkdtemp(prefix="tf-testnet-"))
    (www / "index.html").write_text(PAGE)
    server = None
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", netns)
        _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", netns, "addr", "add", f"{SERVER_ADDRESS}/24", "dev", ns_if)
        _ip("-n", netns, "link", "set", ns_if, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", "80",
             "--bind", SERVER_ADDRESS, "--directory", str(www)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until(lambda: _serving(SERVER_ADDRESS), 30,
              explain=lambda: f"http.server in {netns} (exited: {server.poll()})")
        yield ServedNet(netns, SERVER_ADDRESS, PAGE)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for args in (("link", "del", host_if), ("netns", "del", netns)):
            subprocess.run(["ip", *args], capture_output=True)
        shutil.rmtree(www, ignore_errors=True)


__all__ = ["ServedNet", "served_network"]
