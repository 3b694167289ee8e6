"""exec: the host-to-guest round trip of running a command in a ready VM, over the virtio-serial
channel and the guest agent: `true`, and a command writing 1 MiB to stdout."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .common import percentile, print_table
from .vmbench import SPEC, node

CHART = [
    ("exec true p50 (ms)", "exec_true_p50_ms"),
    ("exec true p99 (ms)", "exec_true_p99_ms"),
    ("exec 1 MiB stdout p50 (ms)", "exec_1mib_stdout_p50_ms"),
]


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_true, n_big = (50, 10) if args.quick else (500, 50)
    agent = node(warm_pool=False, restore=True)
    trues, bigs = [], []
    try:
        box = agent.acquire(SPEC)
        try:
            for _ in range(5):  # warm the guest's page cache
                box.exec(["true"])
            for _ in range(n_true):
                t0 = time.perf_counter()
                r = box.exec(["true"])
                trues.append((time.perf_counter() - t0) * 1000)
                assert r.exit_code == 0
            for _ in range(n_big):
                t0 = time.perf_counter()
                r = box.exec(["head", "-c", "1048576", "/dev/zero"])
                bigs.append((time.perf_counter() - t0) * 1000)
                assert r.exit_code == 0 and len(r.stdout) == 1 << 20
        finally:
            box.destroy()
        accel = agent.accel().accel
    finally:
        agent.close()
    result = {
        "samples_true": n_true, "samples_1mib": n_big, "accel": accel,
        "exec_true_p50_ms": round(percentile(trues, 50), 2),
        "exec_true_p99_ms": round(percentile(trues, 99), 2),
        "exec_1mib_stdout_p50_ms": round(percentile(bigs, 50), 2),
        "baseline_note": "qemu-guest-agent guest-exec + status polling: 80-90 ms here "
                         "(HOST-NOTES.md; not run by this scenario)",
    }
    print_table(f"exec: {n_true} x `true`, {n_big} x 1 MiB of stdout, one ready VM ({accel})", [
        ("exec true p50 / p99",
         f"{result['exec_true_p50_ms']} / {result['exec_true_p99_ms']} ms"),
        ("exec 1 MiB stdout p50", f"{result['exec_1mib_stdout_p50_ms']} ms"),
    ])
    return result
