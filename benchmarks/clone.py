"""clone: our copy-on-write overlay vs `qemu-img create -b`, interleaved, same golden image."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tryfleet.images import ImageError, ImageStore
from tryfleet.nodeagent import Cloner, default_data_dir, qemu_img_clone

from .common import percentile, print_table, scratch_dir

TARGET_P50_MS = 2.0

CHART = [
    ("tryfleet clone: p50 (ms)", "clone_p50_ms"),
    ("qemu-img create: p50 (ms)", "qemu_img_p50_ms"),
    ("tryfleet clone: p99 (ms)", "clone_p99_ms"),
    ("qemu-img create: p99 (ms)", "qemu_img_p99_ms"),
]


def _golden(tmp: Path) -> tuple[Path, str]:
    try:
        image = ImageStore(default_data_dir()).get("base")
        return image.rootfs, f"base image {image.digest[:12]}"
    except ImageError:
        path = tmp / "golden.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "2G"], check=True)
        return path, "synthetic 2 GiB qcow2 (base image not built)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = 50 if args.quick else 500
    tmp = Path(tempfile.mkdtemp(prefix="bench-clone-", dir=scratch_dir()))
    try:
        golden, source = _golden(tmp)
        cloner = Cloner()
        cloner.clone(golden, tmp / "warmup.qcow2")  # builds the template once, outside timing
        ours, theirs = [], []
        for i in range(n):
            t0 = time.perf_counter()
            cloner.clone(golden, tmp / f"ours-{i}.qcow2")
            t1 = time.perf_counter()
            qemu_img_clone(golden, tmp / f"qemu-{i}.qcow2")
            t2 = time.perf_counter()
            ours.append((t1 - t0) * 1000)
            theirs.append((t2 - t1) * 1000)
        check = subprocess.run(["qemu-img", "check", str(tmp / f"ours-{n - 1}.qcow2")],
                               capture_output=True, text=True)
        identical = (tmp / "ours-0.qcow2").read_bytes() == (tmp / "qemu-0.qcow2").read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "golden": source,
        "samples": n,
        "clone_p50_ms": round(percentile(ours, 50), 3),
        "clone_p99_ms": round(percentile(ours, 99), 3),
        "qemu_img_p50_ms": round(percentile(theirs, 50), 3),
        "qemu_img_p99_ms": round(percentile(theirs, 99), 3),
        "speedup": round(percentile(theirs, 50) / percentile(ours, 50), 1),
        "qemu_img_check_ok": check.returncode == 0,
        "byte_identical_to_qemu_img": identical,
        "target_clone_p50_ms": TARGET_P50_MS,
    }
    print_table(f"clone: {n} overlays each way, interleaved, of the {source}", [
        ("tryfleet clone p50 / p99", f"{result['clone_p50_ms']} / {result['clone_p99_ms']} ms"),
        ("qemu-img create p50 / p99",
         f"{result['qemu_img_p50_ms']} / {result['qemu_img_p99_ms']} ms"),
        ("speedup (p50)", f"{result['speedup']}x"),
        ("qemu-img check of our overlay", "ok" if result["qemu_img_check_ok"] else "FAILED"),
        ("byte-identical to qemu-img's", str(identical)),
    ])
    return result
