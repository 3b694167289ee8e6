"""A Hypervisor with no VMs: each "domain" is the real guest agent in a thread on a socketpair.

Commands run as host processes inside a scratch directory standing in for the guest's root, so
unit tests exercise the real wire protocol, host channel and lifecycle in milliseconds. Faults
can be injected: a start that fails, a boot that never answers, a guest that sends garbage, a
guest that crashes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tryfleet.images.guestagent.agent import Agent

from .errors import HypervisorError
from .hypervisor import DOMAIN_PREFIX, DomainSpec, RestoreSpec


@dataclass
class _Domain:
    spec: DomainSpec
    host_sock: socket.socket
    guest_sock: socket.socket
    root: tempfile.TemporaryDirectory[str]
    thread: threading.Thread | None = None
    opened: bool = False
    started_at: float = field(default_factory=time.monotonic)


class FakeHypervisor:
    def __init__(self, *, boot_delay_s: float = 0.0, fail_start: bool = False,
                 never_boot: bool = False, garbled: bool = False) -> None:
        self.boot_delay_s = boot_delay_s
        self.fail_start = fail_start
        self.never_boot = never_boot
        self.garbled = garbled  # the guest answers with a malformed frame instead of an agent
        self.domains: dict[str, _Domain] = {}
        self.started: list[str] = []
        self.saved: list[str] = []
        self.restored: list[str] = []
        self.nics: dict[str, Path] = {}  # domain -> the egress proxy socket its NIC leads to
        self.cpu_ns: dict[str, int] = {}  # what cpu_time_ns answers (0 when not set)
        self.cpu_shares: dict[str, int] = {}  # set_cpu_shares's last word per domain
        self._lock = threading.Lock()

    def start(self, spec: DomainSpec) -> None:
        if self.fail_start:
            raise HypervisorError(f"failed to start domain {spec.name}: injected failure")
        with self._lock:
            if spec.name in self.domains:
                raise HypervisorError(f"domain {spec.name} already exists")
            host_sock, guest_sock = socket.socketpair()
            dom = _Domain(spec, host_sock, guest_sock, tempfile.TemporaryDirectory(
                prefix="tryfleet-fakeguest-"))
            (Path(dom.root.name) / "root").mkdir()
            self.domains[spec.name] = dom
            self.started.append(spec.name)
            if spec.egress_socket is not None:  # no NIC here: only recorded that one was asked
                self.nics[spec.name] = spec.egress_socket
        spec.console_log.write_text(f"fake console of {spec.name}\n")
        if not self.never_boot:
            dom.thread = threading.Thread(target=self._guest, args=(dom,), daemon=True,
                                          name=f"fakeguest-{spec.name}")
            dom.thread.start()

    def _guest(self, dom: _Domain) -> None:
        time.sleep(self.boot_delay_s)
        if self.garbled:  # a 3-byte frame of bytes that are not msgpack
            dom.guest_sock.sendall((3).to_bytes(4, "big") + b"\xc1\xc1\xc1")
            return
        agent = Agent(dom.guest_sock.fileno(), pid1=False, use_signals=False, exit_on_eof=True,
                      fs_root=dom.root.name)
        with contextlib.suppress(OSError):  # the domain was destroyed under the agent
            agent.run()

    def open_channel(self, name: str) -> socket.socket:
        with self._lock:
            dom = self.domains.get(name)
            if dom is None:
                raise HypervisorError(f"domain {name} is gone before its channel was opened")
            dom.opened = True
            return dom.host_sock

    def crash(self, name: str) -> None:
        """The guest dies: its side of the channel closes, as when QEMU exits."""
        with self._lock:
            dom = self.domains.get(name)
        if dom is not None:
            dom.guest_sock.shutdown(socket.SHUT_RDWR)

    def destroy(self, name: str) -> None:
        with self._lock:
            dom = self.domains.pop(name, None)
        if dom is None:
            return
        with contextlib.suppress(OSError):
            dom.guest_sock.shutdown(socket.SHUT_RDWR)
        if dom.thread is not None:
            dom.thread.join(timeout=5)
        dom.guest_sock.close()
        if not dom.opened:
            dom.host_sock.close()
        dom.root.cleanup()

    def save(self, name: str, path: Path) -> None:
        """A saved fake domain is its definition; restoring starts a fresh guest agent."""
        with self._lock:
            dom = self.domains.get(name)
        if dom is None:
            raise HypervisorError(f"failed to save {name}: no such domain")
        spec = dom.spec
        path.write_text(json.dumps({"name": spec.name, "vcpus": spec.vcpus,
                                    "mem_mib": spec.mem_mib, "kernel": str(spec.kernel),
                                    "initrd": str(spec.initrd), "accel": spec.accel}))
        self.saved.append(name)
        self.destroy(name)

    def restore(self, path: Path, spec: RestoreSpec) -> str:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise HypervisorError(f"unreadable saved domain {path}: {err}") from err
        self.start(DomainSpec(
            name=saved["name"], vcpus=saved["vcpus"], mem_mib=saved["mem_mib"],
            kernel=Path(saved["kernel"]), initrd=Path(saved["initrd"]), disk=spec.disk,
            backing=spec.chain[0] if spec.chain else None, console_log=spec.console_log,
            accel=saved["accel"], metadata=spec.metadata))
        self.restored.append(saved["name"])
        return str(saved["name"])

    def list_domains(self, prefix: str = DOMAIN_PREFIX) -> list[str]:
        with self._lock:
            return sorted(n for n in self.domains if n.startswith(prefix))

    def domain_xml(self, name: str) -> str | None:
        with self._lock:
            dom = self.domains.get(name)
        return None if dom is None else f"<domain type='fake'><name>{name}</name></domain>"

    def cpu_time_ns(self, name: str) -> int | None:
        with self._lock:
            return self.cpu_ns.get(name, 0) if name in self.domains else None

    def reap_networks(self, gone: Callable[[str], bool]) -> list[str]:
        return []  # its domains have no networks

    def set_cpu_shares(self, name: str, shares: int) -> None:
        with self._lock:
            if name not in self.domains:
                raise HypervisorError(f"failed to set the CPU shares of {name}: no such domain")
            self.cpu_shares[name] = shares

    def guest_root(self, name: str) -> Path:
        return Path(self.domains[name].root.name)

    def close(self) -> None:
        for name in self.list_domains(""):
            self.destroy(name)


def make_fake_image(data_dir: Path, name: str = "base", disk_mib: int = 64,
                    warm: tuple[str, ...] = ()) -> Path:
    """An image in the store's layout for fake hosts: a real empty qcow2, stand-in boot files."""
    import hashlib
    import subprocess

    digest = hashlib.sha256(f"fake-{name}".encode()).hexdigest()
    folder = data_dir / "images" / name / digest
    if (folder / "manifest.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "rootfs.qcow2"),
                    f"{disk_mib}M"], check=True)
    (folder / "vmlinuz").write_bytes(b"fake kernel")
    (folder / "initrd.img").write_bytes(b"fake initrd")
    (folder / "manifest.json").write_text(json.dumps({
        "name": name, "digest": digest, "disk_mib": disk_mib,
        "built_at": "2026-01-01T00:00:00Z", "kernel_version": "fake", "warm": list(warm)}))
    return folder
