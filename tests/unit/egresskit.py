"""For the egress proxy's tests: origin servers on loopback, a guest's client over the proxy's
unix socket, and a proxy whose address policy lets 127.0.0.1 through (production refuses it)
while refusing everything else production refuses."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from tryfleet.nodeagent.egress import EgressProxy, Resolver, blocked_reason, parse_rules
from tryfleet.wire import EgressEvent, Ids

LOOPBACK = ipaddress.ip_address("127.0.0.1")
OWN = frozenset({ipaddress.ip_address("192.0.2.10")})
HOSTS = """# test names
127.0.0.1 allowed.test Other.Test
10.0.0.5 private.test
169.254.169.254 metadata.test
192.0.2.10 own.test
127.0.0.1 mixed.test
10.0.0.6 mixed.test  # one bad address refuses the name
"""


def loopback_allowed(ip, own):
    """Production's policy, but for 127.0.0.1, where the tests' origins listen."""
    return None if ip == LOOPBACK else blocked_reason(ip, own)


class Origin:
    """A TCP server on 127.0.0.1 running handle(sock) per connection; counts connections."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.accepted = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.accepted += 1
                handle(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def http_origin(seen: list[bytes]) -> Callable[[socket.socket], None]:
    """Reads one request head (kept in seen), answers 200 "hello" and closes."""
    def handle(sock: socket.socket) -> None:
        head = read_head(sock, 65536)
        if b"\r\n\r\n" not in head:
            return  # closed before its head ended
        seen.append(head)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    return handle


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def read_head(sock: socket.socket, chunk: int = 1) -> bytes:
    """Up to the end of an HTTP head (by default byte by byte: nothing after it is taken), or
    what came before the peer closed."""
    out = b""
    while b"\r\n\r\n" not in out:
        data = sock.recv(chunk)
        if not data:
            break
        out += data
    return out


class Kit:
    """A started proxy with the test names, the events it recorded, and VMs attached to it."""

    def __init__(self, **options: object) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eg", dir="/tmp"))  # short: sun_path is 108
        (self.dir / "hosts").write_text(HOSTS)
        self.events: list[EgressEvent] = []
        self.audit_down = False
        self.lookups: list[str] = []
        self.resolver = Resolver(self.dir / "hosts", lookup=self._lookup)
        self.proxy = EgressProxy(self._record, self.resolver, lambda: OWN,
                                 node_name="egress-test", blocked=loopback_allowed,
                                 **options)  # type: ignore[arg-type]
        self.proxy.start()

    def _record(self, event: EgressEvent) -> None:
        if self.audit_down:
            raise OSError("audit disk full")
        self.events.append(event)

    def _lookup(self, host: str) -> list[str]:
        self.lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def attach(self, vm: str, *rules: str) -> Path:
        path = self.dir / f"{vm}.sock"
        self.proxy.attach(vm, path, parse_rules(rules), Ids(tenant="t1", iteration=f"it-{vm}"))
        return path

    def connect(self, path: Path, head: bytes = b"") -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(path))
        if head:
            sock.sendall(head)
        return sock

    def ask(self, path: Path, head: bytes) -> bytes:
        """Send a request and read the answer to its end."""
        with self.connect(path, head) as sock:
            return read_all(sock)

    def of(self, kind: str) -> list[EgressEvent]:
        return [e for e in self.events if e.kind == kind]

    def close(self) -> None:
        self.proxy.close()
        self.resolver.close()
        shutil.rmtree(self.dir, ignore_errors=True)
