"""`tryfleet host info` and `tryfleet host reap`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tryfleet.nodeagent import NodeAgentError

from .common import error, open_node


def info(data_dir: Path, uri: str, as_json: bool) -> int:
    try:
        node = open_node(data_dir, uri, reap=False)
    except NodeAgentError as err:
        return error(str(err))
    try:
        accel, cap, pressure = node.accel(), node.capacity(), node.pressure()
        report = {
            "hostname": cap.hostname,
            "accel": accel.accel,
            "accel_reason": accel.reason,
            "capacity": asdict(cap),
            "pressure": asdict(pressure),
            "data_dir": str(data_dir),
            "libvirt_uri": uri,
            "images": [img.name for img in node.store.list()],
        }
    finally:
        node.close()
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"host      {cap.hostname}")
    print(f"accel     {accel.accel}  ({accel.reason})")
    print(f"capacity  {cap.cpus} cpus, {cap.mem_mib} MiB memory, "
          f"{cap.disk_free_mib} MiB free in {data_dir}")
    print(f"pressure  cpu {pressure.cpu_some_avg10:.1f}%  memory {pressure.memory_some_avg10:.1f}%"
          f"  io {pressure.io_some_avg10:.1f}% (PSI some avg10);  memory in use "
          f"{pressure.mem_used_pct:.0f}%;  load {pressure.load1:.2f}")
    print(f"images    {', '.join(report['images']) or '(none built: tryfleet image build base)'}")
    return 0


def reap(data_dir: Path, uri: str) -> int:
    try:
        node = open_node(data_dir, uri, reap=True)
    except NodeAgentError as err:
        return error(str(err))
    node.close()
    r = node.reaped
    print(f"removed {len(r.domains)} domain(s) and {len(r.dirs)} run director(ies) "
          "left by runs that are gone")
    for name in r.domains:
        print(f"  domain {name}")
    return 0
