"""egress: what the egress proxy adds to a small HTTP fetch.

One GET of a 512-byte body from an origin on 127.0.0.1, a new connection each time (as a guest
behind the proxy gets: one request per proxy connection), measured four ways, interleaved in
one run so that the machine's noise falls on each alike:
- direct: straight to the origin over TCP;
- proxy: through the egress proxy's unix socket, decisions recorded by a no-op;
- proxy_audit: the same, every decision appended to a real audit trail (durable when the
  append returns, as in production) in a scratch directory;
- relay_audit: the whole path a guest's request takes (nodeagent/guestnet.py): over TCP to a
  socat relay that forks a child per connection onto the proxy's socket, then proxy_audit's
  proxy. (The guest's tap and network namespace are left out: they add a hop of the kernel's
  network stack, as direct has one.)
egress_overhead_p50_ms = relay_audit_p50_ms - direct_p50_ms: what a guest's fetch pays (the
target: <= 5 ms); proxy_overhead_p50_ms (the proxy alone, no audit) and
audit_overhead_p50_ms (the proxy with its audit) say where it goes.

The origin listens on loopback, which the proxy refuses in production: this benchmark gives
it an address policy that lets 127.0.0.1 through and nothing else production refuses.

    python -m benchmarks.egress [N]          # or: proxy_overhead(n=200) -> dict
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from tryfleet.audit import Audit
from tryfleet.nodeagent.egress import EgressProxy, Resolver, blocked_reason, parse_rules
from tryfleet.nodeagent.egress.addresses import IPAddress
from tryfleet.wire import EgressEvent, Ids

from .common import percentile, print_table

LOOPBACK = ipaddress.ip_address("127.0.0.1")
BODY = b"x" * 512
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % len(BODY)) + BODY
TARGET_OVERHEAD_P50_MS = 5.0


def _loopback_allowed(ip: IPAddress, own: Collection[IPAddress]) -> str | None:
    return None if ip == LOOPBACK else blocked_reason(ip, own)


class _Origin(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(65536)
            if not data:
                return
            head += data
        self.request.sendall(RESPONSE)


def _read_to_end(sock: socket.socket) -> bytes:
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def _audit_record(audit: Audit) -> Callable[[EgressEvent], None]:
    def record(ev: EgressEvent) -> None:
        audit.record(f"egress.{ev.kind}", tenant=ev.ids.tenant, actor=f"vm:{ev.vm}",
                     request_id=ev.ids.request_id, iteration=ev.ids.iteration,
                     host=ev.ids.host, outcome=ev.decision,
                     details={"host": ev.host, "port": ev.port, "address": ev.address,
                              "reason": ev.reason, "request": ev.request,
                              "bytes_up": ev.bytes_up, "bytes_down": ev.bytes_down,
                              "duration_s": ev.duration_s})
    return record


def _start_relay(socket_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """socat on a free loopback port, forking a child per connection onto socket_path, as the
    relay in a guest's namespace does; once it listens."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed (scripts/setup.sh installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = subprocess.Popen([socat, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                              f"UNIX-CONNECT:{socket_path}"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return relay, port
        if relay.poll() is not None or time.monotonic() > deadline:
            relay.kill()
            raise RuntimeError(f"the socat relay did not listen on 127.0.0.1:{port}")
        time.sleep(0.005)  # socat starts in milliseconds; nothing else signals it


def proxy_overhead(n: int = 200) -> dict[str, Any]:
    """p50 and p99 (ms) of a small GET direct, through the proxy (no-op record), through the
    proxy with a real audit append, and through a socat relay onto that proxy as a guest's
    request goes; n fetches of each, interleaved."""
    work = Path(tempfile.mkdtemp(prefix="egb", dir="/tmp"))  # short: sun_path holds 108
    origin = _Origin(("127.0.0.1", 0), _Handler)
    threading.Thread(target=origin.serve_forever, args=(0.05,), daemon=True).start()
    port = origin.server_address[1]
    (work / "hosts").write_text("127.0.0.1 bench.test\n")
    resolver = Resolver(work / "hosts")
    (work / "audit").mkdir()
    audit = Audit(work / "audit")
    proxies = {
        "proxy": EgressProxy(lambda ev: None, resolver, frozenset, node_name="bench",
                             blocked=_loopback_allowed),
        "proxy_audit": EgressProxy(_audit_record(audit), resolver, frozenset,
                                   node_name="bench", blocked=_loopback_allowed),
    }
    rules, ids = parse_rules([f"bench.test:{port}"]), Ids(tenant="bench", iteration="it-1")
    paths = {}
    for name, proxy in proxies.items():
        proxy.start()
        paths[name] = work / f"{name}.sock"
        proxy.attach(name, paths[name], rules, ids)
    via_proxy = (f"GET http://bench.test:{port}/small HTTP/1.1\r\nHost: bench.test\r\n"
                 "\r\n").encode()
    direct = f"GET /small HTTP/1.1\r\nHost: bench.test:{port}\r\n\r\n".encode()

    def fetch_direct() -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(direct)
            return _read_to_end(sock)

    def fetch_proxy(path: Path) -> Callable[[], bytes]:
        def fetch() -> bytes:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(via_proxy)
                return _read_to_end(sock)
        return fetch

    relay, relay_port = _start_relay(paths["proxy_audit"])

    def fetch_relay() -> bytes:
        with socket.create_connection(("127.0.0.1", relay_port)) as sock:
            sock.sendall(via_proxy)
            return _read_to_end(sock)

    ways: dict[str, Callable[[], bytes]] = {
        "direct": fetch_direct, "proxy": fetch_proxy(paths["proxy"]),
        "proxy_audit": fetch_proxy(paths["proxy_audit"]), "relay_audit": fetch_relay}
    samples: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for fetch in ways.values():  # warm up: imports, first connections, the audit file
            assert fetch().endswith(BODY)
        for i in range(n):
            order = list(ways.items())
            order = order[i % len(order):] + order[:i % len(order)]
            for name, fetch in order:
                t0 = time.perf_counter()
                got = fetch()
                samples[name].append((time.perf_counter() - t0) * 1000)
                if not got.endswith(BODY):
                    raise RuntimeError(f"{name}: unexpected answer {got[:200]!r}")
    finally:
        relay.terminate()
        relay.wait()
        for proxy in proxies.values():
            proxy.close()
        resolver.close()
        audit.close()
        origin.shutdown()
        origin.server_close()
        shutil.rmtree(work, ignore_errors=True)
    out: dict[str, Any] = {"n": n}
    for name, values in samples.items():
        out[f"{name}_p50_ms"] = round(percentile(values, 50), 3)
        out[f"{name}_p99_ms"] = round(percentile(values, 99), 3)
    for key, way in (("egress_overhead", "relay_audit"), ("proxy_overhead", "proxy"),
                     ("audit_overhead", "proxy_audit")):
        out[f"{key}_p50_ms"] = round(out[f"{way}_p50_ms"] - out["direct_p50_ms"], 3)
    out["egress_overhead_target_ms"] = TARGET_OVERHEAD_P50_MS
    out["egress_overhead_met"] = out["egress_overhead_p50_ms"] <= TARGET_OVERHEAD_P50_MS
    return out


if __name__ == "__main__":
    result = proxy_overhead(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    print_table("egress: a small GET direct vs through the egress proxy",
                [(k, str(v)) for k, v in result.items()])
