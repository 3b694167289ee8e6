"""What every scenario shares: percentiles, the machine description, output and saving."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from .chart import Spec, save_chart


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sample."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def machine() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "cpus": psutil.cpu_count(logical=True),
        "mem_mib": psutil.virtual_memory().total // (1024 * 1024),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(title)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def finish(name: str, result: dict[str, Any], as_json: bool, save: Path | None,
           chart: Spec | None = None, title: str | None = None) -> None:
    """Print or save the result; with save, also DIR/NAME.png when the scenario has a chart."""
    result = {"scenario": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(), **result}
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        (save / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {save / (name + '.json')}")
        if chart is not None and save_chart(save / f"{name}.png", title or name, result, chart):
            print(f"saved {save / (name + '.png')}")
    if as_json:
        print(json.dumps(result))


def scratch_dir(base: Path | None = None) -> Path:
    root = base or Path(os.environ.get("TRYFLEET_DATA") or "/var/lib/tryfleet") / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root
