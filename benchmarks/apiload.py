"""The status load of the `api` benchmark: several client processes, each one keep-alive
connection sending GET back to back over a bare socket, and the CPU the gateway and the
clients spend per request."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from typing import Any

from .common import percentile


def stats(samples_ms: Sequence[float]) -> dict[str, Any]:
    """n, p50, p90, p99 (ms, nearest rank) of a sample; only n when it is empty."""
    if not samples_ms:
        return {"n": 0}
    return {"n": len(samples_ms),
            **{f"p{p}": round(percentile(samples_ms, p), 2) for p in (50, 90, 99)}}


def load(url: str, path: str, headers: dict[str, str], procs: int, duration_s: float,
         gateway_pid: int | None) -> dict[str, Any]:
    """procs processes, each one keep-alive client sending GET path back to back for
    duration_s once all are connected: successful requests/s (summed over the processes,
    each over its own elapsed time), errors, latency; and the CPU time the gateway's process
    and the clients spent per request (what 2 cores can give bounds the rate)."""
    ctx = multiprocessing.get_context("spawn")  # never fork a Ray driver
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_client, args=(url, path, headers, duration_s, ready, go,
                                                 out), daemon=True) for _ in range(procs)]
    for p in workers:
        p.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
        cpu0 = _cpu_s(gateway_pid)
        go.set()
        got = [out.get(timeout=duration_s + 120) for _ in workers]
        cpu1 = _cpu_s(gateway_pid)
    finally:
        for p in workers:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    lat = [x for g in got for x in g["latency_ms"]]
    n = sum(g["ok"] + g["errors"] for g in got) or 1
    gateway_cpu = None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) * 1000 / n, 3)
    return {"path": path, "procs": procs, "duration_s": duration_s,
            "requests_per_s": round(sum(g["ok"] / g["elapsed_s"] for g in got), 1),
            "ok": sum(g["ok"] for g in got), "errors": sum(g["errors"] for g in got),
            "statuses": sorted({s for g in got for s in g["statuses"]}),
            "latency_ms": stats(lat), "gateway_cpu_ms_per_request": gateway_cpu,
            "client_cpu_ms_per_request": round(sum(g["cpu_s"] for g in got) * 1000 / n, 3)}


def _cpu_s(pid: int | None) -> float | None:
    """User and system CPU seconds of a process of this host so far (None: not here)."""
    import psutil

    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def _client(url: str, path: str, headers: dict[str, str], duration_s: float, ready: Any,
            go: Any, out: Any) -> None:
    """One keep-alive connection sending GET path back to back, over a bare socket: a client
    as light as wrk's, so that the cores it shares with the gateway go to the gateway (an
    httpx client spends more CPU per request than the server it measures)."""
    conn = _Conn(url, path, headers)
    try:
        if conn.get() != 200:  # connected, and the key works
            raise RuntimeError(f"GET {path} answered {conn.last_status}")
        ready.put(True)
        go.wait()
        ok = errors = 0
        statuses: set[int] = set()
        lat: list[float] = []
        start, cpu = time.perf_counter(), time.process_time()
        end = start + duration_s
        while (t0 := time.perf_counter()) < end:
            status = conn.get()
            done = time.perf_counter()
            statuses.add(status)
            if status == 200:
                ok += 1
                lat.append((done - t0) * 1000)
            else:
                errors += 1
        out.put({"ok": ok, "errors": errors, "statuses": sorted(statuses), "latency_ms": lat,
                 "elapsed_s": time.perf_counter() - start,
                 "cpu_s": time.process_time() - cpu})
    finally:
        conn.close()


class _Conn:
    """HTTP/1.1 GET over one socket, kept alive; answers with a Content-Length only."""

    def __init__(self, url: str, path: str, headers: dict[str, str]) -> None:
        import socket
        from urllib.parse import urlsplit

        where = urlsplit(url)
        lines = [f"GET {path} HTTP/1.1", f"Host: {where.netloc}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.sock = socket.create_connection((where.hostname or "127.0.0.1", where.port or 80))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.last_status = 0

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the gateway closed the connection")
        self.buf += data

    def get(self) -> int:
        self.sock.sendall(self.request)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(self.buf[:end]).decode("latin-1").lower()
        length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                       if line.startswith("content-length:")), None)
        if length is None:
            raise RuntimeError(f"an answer without a Content-Length: {head[:300]}")
        while len(self.buf) < end + 4 + length:
            self._fill()
        del self.buf[:end + 4 + length]
        self.last_status = int(head.split(" ", 2)[1])
        return self.last_status

    def close(self) -> None:
        self.sock.close()


__all__ = ["load", "stats"]
