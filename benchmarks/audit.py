"""audit: what the audit trail costs an action, and how fast its chain is checked.

append (the target): `Audit.arecord` latency, the record durable when it returns, under API
load: 1,500 records/s arriving at random (Poisson) as concurrent requests of a gateway's event
loop would write them, while a second process (the scheduler's part) appends 500/s from 4
threads into the same trail. About 2,000 records/s in all: a gateway on 2 cores answers a few
hundred requests/s, each writing 2-4 records.
saturation: 8 threads here and 4 in the second process appending back to back, as fast as the
machine goes: the most records/s, and the latency then.
Baselines, same run, same disk: a bare one-row SQLite commit (WAL, synchronous=FULL), the floor
any durable record pays, alone and (in a process of its own, every 2 ms) while the load runs;
one appender alone.
verify: records/s of `verify` over a trail of 200,000 records (50,000 with --quick), a signed
checkpoint every 1,000, the signatures checked too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tryfleet.audit import Audit, AuditPaths, Entry, store, verify
from tryfleet.audit.checkpoints import Signer

from .common import percentile, print_table, scratch_dir

TARGET_APPEND_P99_MS = 2.0
TARGET_VERIFY_PER_S = 50_000
GATEWAY_RATE, SCHEDULER_RATE = 1500.0, 500.0  # records/s
THREADS, CHILD_THREADS = 8, 4
SEED = 20261201
ROOT = Path(__file__).resolve().parents[1]
DETAILS = {"argv": ["python3", "-m", "pytest", "-q", "tests/test_x.py"], "cwd": "/root",
           "user": "root", "env_names": ["HOME", "PATH"]}

CHART = [
    ("audit under API load: append p50 (ms)", "append_p50_ms"),
    ("audit, one appender: append p50 (ms)", "append_alone_p50_ms"),
    ("bare SQLite commit: append p50 (ms)", "bare_commit_p50_ms"),
    ("audit under API load: append p99 (ms)", "append_p99_ms"),
    ("audit, one appender: append p99 (ms)", "append_alone_p99_ms"),
    ("bare SQLite commit: append p99 (ms)", "bare_commit_p99_ms"),
    ("bare SQLite commit under the same load: append p99 (ms)",
     "bare_commit_under_load_p99_ms"),
    ("audit: verify (records/s)", "verify_records_per_s"),
    ("audit, saturated: appends (records/s)", "saturated_appends_per_s"),
]

# The second process: `threads` threads appending for `seconds`, back to back when rate is 0,
# else at Poisson arrivals summing to `rate`; prints its latencies (ms) as JSON.
CHILD = """
import json, random, sys, threading, time
from tryfleet.audit import Audit
path, threads, seconds, rate, details = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    float(sys.argv[4]), json.loads(sys.argv[5])
audit = Audit(path)
print("ready", flush=True)
sys.stdin.readline()
ms, start = [], time.monotonic()
def work(n):
    rnd, at = random.Random(n), start
    while True:
        at = at + rnd.expovariate(rate / threads) if rate else time.monotonic()
        if at > start + seconds:
            return
        time.sleep(max(0.0, at - time.monotonic()))
        t0 = time.perf_counter()
        audit.record("iteration.state", tenant="acme", actor="scheduler", request_id=f"c{n}",
                     iteration=f"it-{n}", outcome="RUNNING", details=details)
        ms.append((time.perf_counter() - t0) * 1000)
ts = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
audit.close()
print(json.dumps(ms), flush=True)
"""


# The floor under the same load: a process of its own committing one bare row every 2 ms
# (WAL, synchronous=FULL) into another file on the same disk while the trail is appended to.
PROBE = """
import json, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode = WAL"); db.execute("PRAGMA synchronous = FULL")
db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
seconds, body = float(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
sys.stdin.readline()
ms, stop = [], time.monotonic() + float(sys.argv[2])
while time.monotonic() < stop:
    t0 = time.perf_counter()
    db.execute("BEGIN IMMEDIATE"); db.execute("INSERT INTO t (body) VALUES (?)", (body,))
    db.execute("COMMIT")
    ms.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.002)
print(json.dumps(ms), flush=True)
"""


class Helper:
    """A process of this benchmark's (CHILD or PROBE), started and waiting for `go`."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != "ready\n":
            raise RuntimeError("a process of the benchmark did not start")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def latencies(self) -> list[float]:
        assert self.proc.stdout is not None
        got: list[float] = json.loads(self.proc.stdout.readline())
        self.proc.wait(timeout=60)
        return got


async def _record(audit: Audit, n: int) -> float:
    t0 = time.perf_counter()
    await audit.arecord("exec.start", tenant="acme", actor=f"key:k{n % 10}",
                        request_id=f"req_{n}", sandbox=f"sbx-{n % 50}", details=DETAILS)
    return (time.perf_counter() - t0) * 1000


async def _api_load(audit: Audit, seconds: float) -> list[float]:
    """Poisson arrivals at GATEWAY_RATE, each its own task on this event loop."""
    loop, rnd = asyncio.get_running_loop(), random.Random(SEED)
    start = at = loop.time()
    tasks: list[asyncio.Task[float]] = []
    while (at := at + rnd.expovariate(GATEWAY_RATE)) < start + seconds:
        await asyncio.sleep(max(0.0, at - loop.time()))
        tasks.append(asyncio.create_task(_record(audit, len(tasks))))
    return list(await asyncio.gather(*tasks))


def _saturate(audit: Audit, seconds: float) -> list[float]:
    ms: list[float] = []
    stop = time.monotonic() + seconds

    def work(n: int) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            audit.record("exec.start", tenant="acme", actor="key:k1", request_id=f"req_{n}",
                         details=DETAILS)
            ms.append((time.perf_counter() - t0) * 1000)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ms


def _two_processes(data: Path, seconds: float, saturate: bool) -> dict[str, Any]:
    data.mkdir()
    second = Helper(CHILD, str(data), str(CHILD_THREADS), str(seconds),
                    str(0.0 if saturate else SCHEDULER_RATE), json.dumps(DETAILS))
    probe = Helper(PROBE, str(data / "probe.db"), str(seconds), json.dumps(DETAILS))
    audit = Audit(data)
    second.go()
    probe.go()
    try:
        ours = _saturate(audit, seconds) if saturate else asyncio.run(_api_load(audit, seconds))
    finally:
        audit.close()
    theirs, floor = second.latencies(), probe.latencies()
    db = sqlite3.connect(AuditPaths.of(data).db)
    low, high, count = db.execute("SELECT MIN(seq), MAX(seq), COUNT(*) FROM records").fetchone()
    db.close()
    return {"ours": ours, "theirs": theirs, "floor": floor, "records": count,
            "one_chain": (low, high) == (1, count) and verify(data).ok}


def _alone(data: Path, n: int) -> list[float]:
    data.mkdir()
    audit = Audit(data)

    async def each() -> list[float]:
        out = []
        for i in range(n):
            out.append(await _record(audit, i))
            await asyncio.sleep(0.001)
        return out

    try:
        return asyncio.run(each())
    finally:
        audit.close()


def _bare_commits(tmp: Path, n: int) -> list[float]:
    db = sqlite3.connect(tmp / "bare.db", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    body = json.dumps(DETAILS)
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (body) VALUES (?)", (body,))
        db.execute("COMMIT")
        ms.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.001)
    db.close()
    return ms


def _fill(data: Path, n: int, batch: int = 1000) -> None:
    """n records, a signed checkpoint after each batch (as Audit's every-1,000 would)."""
    data.mkdir()
    paths = AuditPaths.of(data)
    db = store.open_write(paths.db, True, 5.0)
    signer = Signer(paths)
    try:
        for start in range(0, n, batch):
            entries = [Entry.of("exec.end", tenant=f"t{i % 7}", actor=f"key:k{i % 13}",
                                request_id=f"req_{i // 4}", sandbox=f"sbx-{i % 101}",
                                outcome="exit:0", details={**DETAILS, "n": i})
                       for i in range(start, min(n, start + batch))]
            head = store.append(db, entries, 5.0)[-1]
            signer.append(signer.sign(head.seq, head.hash, time.time()))
    finally:
        db.close()


def _ms(samples: list[float], pct: float) -> float:
    return round(percentile(samples, pct), 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds, saturate_s, n_alone, n_verify = (5.0, 3.0, 300, 50_000) if args.quick \
        else (20.0, 10.0, 2000, 200_000)
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=scratch_dir()))
    try:
        bare = _bare_commits(tmp, n_alone)
        alone = _alone(tmp / "alone", n_alone)
        load = _two_processes(tmp / "load", seconds, saturate=False)
        full = _two_processes(tmp / "saturated", saturate_s, saturate=True)
        _fill(tmp / "verify", n_verify)
        report = verify(tmp / "verify")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours = load["ours"]
    r: dict[str, Any] = {
        "seconds": seconds, "gateway_rate_per_s": GATEWAY_RATE,
        "scheduler_rate_per_s": SCHEDULER_RATE, "appended_under_load": load["records"],
        "append_p50_ms": _ms(ours, 50), "append_p99_ms": _ms(ours, 99),
        "append_max_ms": round(max(ours), 3),
        "second_process_append_p99_ms": _ms(load["theirs"], 99),
        "append_alone_p50_ms": _ms(alone, 50), "append_alone_p99_ms": _ms(alone, 99),
        "bare_commit_p50_ms": _ms(bare, 50), "bare_commit_p99_ms": _ms(bare, 99),
        "bare_commit_under_load_p50_ms": _ms(load["floor"], 50),
        "bare_commit_under_load_p99_ms": _ms(load["floor"], 99),
        "saturated_appends_per_s": round(full["records"] / saturate_s),
        "saturated_append_p50_ms": _ms(full["ours"], 50),
        "saturated_append_p99_ms": _ms(full["ours"], 99),
        "one_chain_under_load": load["one_chain"] and full["one_chain"],
        "verify_records": report.records, "verify_checkpoints": report.checkpoints,
        "verify_intact": report.ok, "verify_s": round(report.elapsed_s, 3),
        "verify_records_per_s": round(report.records / report.elapsed_s),
        "target_append_p99_ms": TARGET_APPEND_P99_MS,
        "target_verify_records_per_s": TARGET_VERIFY_PER_S,
    }
    print_table(f"audit: {GATEWAY_RATE:g}/s from an event loop + {SCHEDULER_RATE:g}/s from a "
                f"second process for {seconds:g} s; verify of {n_verify:,} records", [
        ("append under API load p50 / p99 / max",
         f"{r['append_p50_ms']} / {r['append_p99_ms']} / {r['append_max_ms']} ms "
         f"(target p99 <= {TARGET_APPEND_P99_MS} ms)"),
        ("  the second process's p99", f"{r['second_process_append_p99_ms']} ms"),
        ("append alone p50 / p99", f"{r['append_alone_p50_ms']} / {r['append_alone_p99_ms']} ms"),
        ("bare SQLite commit p50 / p99, quiet disk",
         f"{r['bare_commit_p50_ms']} / {r['bare_commit_p99_ms']} ms"),
        ("  the same meanwhile (the floor under load)",
         f"{r['bare_commit_under_load_p50_ms']} / {r['bare_commit_under_load_p99_ms']} ms"),
        ("saturated: records/s, p50 / p99",
         f"{r['saturated_appends_per_s']:,}/s, {r['saturated_append_p50_ms']} / "
         f"{r['saturated_append_p99_ms']} ms ({THREADS} + {CHILD_THREADS} threads)"),
        ("one contiguous chain, intact", str(r["one_chain_under_load"])),
        ("verify", f"{r['verify_records_per_s']:,} records/s ({report.records:,} records, "
                   f"{report.checkpoints} checkpoints, {r['verify_s']} s; target >= "
                   f"{TARGET_VERIFY_PER_S:,}/s)"),
    ])
    return r


def failed(result: dict[str, Any]) -> bool:
    """A chain that is not one intact chain is a bug, whatever the timings."""
    return not (result.get("one_chain_under_load") and result.get("verify_intact"))
