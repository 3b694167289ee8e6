"""Privileged host set-up, kept apart from the VM runner: start virtlogd and libvirtd.

libvirtd runs in the foreground under a small supervisor that is a child subreaper
(PR_SET_CHILD_SUBREAPER): QEMU processes, which libvirt daemonizes, are re-parented to it and
reaped the moment they exit. Without that, on hosts whose PID 1 reaps orphans slowly (containers,
sandboxes), a destroyed QEMU lingers as a zombie and libvirt waits seconds for it to go.

    python -m nodeagent.daemons start     # idempotent
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
LOG = "/var/log/tryfleet-libvirtd.log"


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def supervise() -> None:
    """Become a subreaper, run libvirtd in the foreground, reap every orphan, exit with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    with open(LOG, "ab") as log:
        daemon = subprocess.Popen(["libvirtd"], stdout=log, stderr=log)
    signal.signal(signal.SIGTERM, lambda *_: daemon.terminate())
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == daemon.pid:
            sys.exit(os.waitstatus_to_exitcode(status))


def start(timeout_s: float = 30.0) -> None:
    if not _running("virtlogd"):
        subprocess.run(["virtlogd", "-d"], check=True)
    if not _running("libvirtd"):
        subprocess.Popen([sys.executable, "-m", "nodeagent.daemons", "supervise"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ok = subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                            capture_output=True).returncode == 0
        if ok:
            return
        time.sleep(0.3)
    raise SystemExit(f"libvirtd did not answer on qemu:///system within {timeout_s:.0f}s; "
                     f"see {LOG}")


if __name__ == "__main__":
    if sys.argv[1:] == ["supervise"]:
        supervise()
    elif sys.argv[1:] == ["start"]:
        start()
    else:
        raise SystemExit("usage: python -m nodeagent.daemons start")
