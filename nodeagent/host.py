"""What this host has and how loaded it is: capacity, pressure (PSI), and which accelerator works.

"/dev/kvm exists" does not mean KVM works: under nested or paravirtual KVM a standard guest can
hang forever at boot. So the probe boots a canary guest (the image's own kernel and initramfs,
told by `tryfleet.canary=1` to print a marker and power off) under KVM with a deadline, and
falls back to TCG when the marker does not appear. The answer is cached per host boot.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tryfleet.wire import Capacity, Pressure

from .errors import NodeAgentError
from .hypervisor import DomainSpec, Hypervisor

CANARY_MARKER = b"TRYFLEET-CANARY-OK"
CANARY_DEADLINE_S = 20.0
PSI_RESOURCES = ("cpu", "memory", "io")


@dataclass(frozen=True, slots=True)
class AccelReport:
    accel: str  # "kvm" or "tcg"
    reason: str
    boot_id: str
    kernel: str
    probed_at: float


def read_capacity(data_dir: Path) -> Capacity:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Capacity(
        hostname=socket.gethostname(),
        cpus=psutil.cpu_count(logical=True) or 1,
        mem_mib=psutil.virtual_memory().total // (1024 * 1024),
        disk_free_mib=psutil.disk_usage(str(data_dir)).free // (1024 * 1024),
    )


def parse_psi(text: str) -> dict[str, float]:
    """`some avg10=1.50 avg60=...` lines -> {"some_avg10": 1.5, "full_avg10": ...}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            key, _, value = item.partition("=")
            if key.startswith("avg"):
                out[f"{kind}_{key}"] = float(value)
    return out


def read_pressure(proc_dir: Path = Path("/proc/pressure")) -> Pressure:
    psi: dict[str, dict[str, float]] = {}
    for res in PSI_RESOURCES:
        try:
            psi[res] = parse_psi((proc_dir / res).read_text())
        except OSError:
            psi[res] = {}
    return Pressure(
        cpu_some_avg10=psi["cpu"].get("some_avg10", 0.0),
        memory_some_avg10=psi["memory"].get("some_avg10", 0.0),
        memory_full_avg10=psi["memory"].get("full_avg10", 0.0),
        io_some_avg10=psi["io"].get("some_avg10", 0.0),
        io_full_avg10=psi["io"].get("full_avg10", 0.0),
        mem_used_pct=psutil.virtual_memory().percent,
        load1=os.getloadavg()[0],
    )


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_usable() -> str | None:
    """None when /dev/kvm can be opened, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return f"/dev/kvm cannot be opened ({err.strerror})"
    os.close(fd)
    return None


def probe_accel(hv: Hypervisor, kernel: Path | None, initrd: Path | None, work_dir: Path,
                name: str, cache: Path | None = None,
                deadline_s: float = CANARY_DEADLINE_S) -> AccelReport:
    forced = os.environ.get("TRYFLEET_ACCEL", "").strip()
    if forced in ("kvm", "tcg"):
        return _report(forced, "forced by TRYFLEET_ACCEL", kernel)
    if forced:
        raise NodeAgentError(f"TRYFLEET_ACCEL={forced!r} is not one of: kvm, tcg (or unset)")
    why_not = kvm_usable()
    if why_not:
        return _report("tcg", why_not, kernel)
    if kernel is None or initrd is None:
        return _report("tcg", "kvm not verified: no guest kernel built yet "
                       "(run `tryfleet image build base`)", kernel)
    cached = _read_cache(cache, kernel)
    if cached is not None:
        return cached
    report = _boot_canary(hv, kernel, initrd, work_dir, name, deadline_s)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(asdict(report)))
    return report


def _boot_canary(hv: Hypervisor, kernel: Path, initrd: Path, work_dir: Path, name: str,
                 deadline_s: float) -> AccelReport:
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / "canary-console.log"
    spec = DomainSpec(name=name, vcpus=1, mem_mib=256, kernel=kernel, initrd=initrd, disk=None,
                      backing=None, console_log=log, accel="kvm", cmdline_extra="tryfleet.canary=1")
    try:
        hv.start(spec)
    except NodeAgentError as err:
        return _report("tcg", f"canary guest failed to start under kvm: {err}", kernel)
    try:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if log.exists() and CANARY_MARKER in log.read_bytes():
                return _report("kvm", "canary guest booted under kvm", kernel)
            time.sleep(0.05)
        return _report("tcg", f"canary guest did not boot under kvm within {deadline_s:.0f}s "
                       "(nested or paravirtual KVM?); using tcg", kernel)
    finally:
        hv.destroy(name)
        log.unlink(missing_ok=True)


def _report(accel: str, reason: str, kernel: Path | None) -> AccelReport:
    return AccelReport(accel, reason, boot_id(), str(kernel or ""), time.time())


def _read_cache(cache: Path | None, kernel: Path) -> AccelReport | None:
    if cache is None:
        return None
    try:
        report = AccelReport(**json.loads(cache.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if report.boot_id != boot_id() or report.kernel != str(kernel):
        return None
    return report
