"""Privileged host set-up, kept apart from the VM runner: start virtlogd and libvirtd.

libvirtd runs in the foreground under a small supervisor that is a child subreaper
(PR_SET_CHILD_SUBREAPER): QEMU processes, which libvirt daemonizes, are re-parented to it and
reaped the moment they exit. Without that, on hosts whose PID 1 reaps orphans slowly (containers,
sandboxes), a destroyed QEMU lingers as a zombie and libvirt waits seconds for it to go. Where
no systemd is there to do it, the supervisor also starts libvirtd again when it dies (it has
crashed under a node agent killed mid-save), at most RESTARTS_PER_MINUTE times a minute; the
node agents open their connection again on their next call.

    python -m tryfleet.nodeagent.daemons start     # idempotent
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
LOG = "/var/log/tryfleet-libvirtd.log"
RESTARTS_PER_MINUTE = 5


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def supervise() -> None:
    """Become a subreaper, run libvirtd in the foreground, reap every orphan, exit with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    stopping = False
    daemon = _libvirtd()

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        daemon.terminate()

    signal.signal(signal.SIGTERM, stop)
    starts: list[float] = [time.monotonic()]
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid != daemon.pid:
            continue
        code = os.waitstatus_to_exitcode(status)
        starts = [t for t in starts if t > time.monotonic() - 60]
        if stopping or code == 0 or len(starts) >= RESTARTS_PER_MINUTE:
            sys.exit(code)
        _note(f"libvirtd exited with {code}; starting it again")
        time.sleep(1.0)
        daemon = _libvirtd()
        starts.append(time.monotonic())


def _libvirtd() -> subprocess.Popen[bytes]:
    with open(LOG, "ab") as log:
        return subprocess.Popen(["libvirtd"], stdout=log, stderr=log)


def _note(line: str) -> None:
    with open(LOG, "a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} tryfleet supervisor: {line}\n")


def answering() -> bool:
    """Whether libvirtd answers on qemu:///system."""
    return subprocess.run(["virsh", "-c", "qemu:///system", "version"],
                          capture_output=True).returncode == 0


def ensure(timeout_s: float = 30.0) -> None:
    """libvirtd answering on qemu:///system: started here when it is not and this process may
    start it (root, libvirtd installed); HypervisorUnavailable, saying what to do, otherwise."""
    from .errors import HypervisorUnavailable

    if shutil.which("virsh") and answering():
        return
    if os.geteuid() != 0 or not shutil.which("libvirtd"):
        raise HypervisorUnavailable(
            "libvirtd is not running on this host; start it with `bash scripts/setup.sh` "
            "(or as root: `python -m tryfleet.nodeagent.daemons start`)")
    try:
        start(timeout_s)
    except (SystemExit, OSError, subprocess.CalledProcessError) as err:
        raise HypervisorUnavailable(f"could not start libvirtd: {err}") from err


def start(timeout_s: float = 30.0) -> None:
    if not _running("virtlogd"):
        subprocess.run(["virtlogd", "-d"], check=True)
    if not _running("libvirtd"):
        subprocess.Popen([sys.executable, "-m", "tryfleet.nodeagent.daemons", "supervise"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if answering():
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
        raise SystemExit("usage: python -m tryfleet.nodeagent.daemons start")
