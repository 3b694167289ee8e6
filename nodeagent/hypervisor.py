"""The one narrow boundary between the node agent and whatever runs VMs.

`LibvirtHypervisor` (libvirt_hv.py) is the real one; `FakeHypervisor` (fake_hv.py) runs the
real guest agent in a thread over a socketpair, for fast tests and simulated hosts.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

DOMAIN_PREFIX = "tryfleet-"
# A guest granted egress reaches the node's proxy here, and nothing else (see libvirt_hv.py).
EGRESS_PROXY = "10.0.2.100:3128"
# The folder of the data dir holding the proxy's socket for each egress guest, <vm>.sock.
EGRESS_SOCKETS = "egress"


@dataclass(frozen=True, slots=True)
class DomainSpec:
    name: str
    vcpus: int
    mem_mib: int
    kernel: Path
    initrd: Path
    disk: Path | None  # the per-VM copy-on-write overlay (None: boot the initramfs only)
    backing: Path | None  # the golden image under it
    console_log: Path
    accel: str = "tcg"  # "kvm" or "tcg"
    cmdline_extra: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # A NIC whose only way out is the node's egress proxy listening on this unix socket (seen
    # in the guest at EGRESS_PROXY; for libvirt see guestnet.py); None: no NIC at all.
    egress_socket: Path | None = None


@dataclass(frozen=True, slots=True)
class RestoreSpec:
    """Where a restored copy of a saved domain keeps its own state. The name and UUID are the
    saved domain's (libvirt will not restore under others); the disk is a fresh overlay on
    top of the frozen disk the domain was saved with."""

    disk: Path
    chain: tuple[Path, ...]  # the overlay's backing files, nearest first
    console_log: Path
    metadata: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Hypervisor(Protocol):
    def start(self, spec: DomainSpec) -> None:
        """Create and start a transient domain; it is gone once destroyed."""

    def open_channel(self, name: str) -> socket.socket:
        """A connected stream socket to the domain's guest-agent port."""

    def destroy(self, name: str) -> None:
        """Stop the domain at once. Idempotent: a domain already gone is not an error."""

    def list_domains(self, prefix: str = DOMAIN_PREFIX) -> list[str]:
        """Names of the domains, running or defined, whose name starts with prefix."""

    def domain_xml(self, name: str) -> str | None:
        """The live definition, kept with the logs of a failed run; None once gone."""

    def save(self, name: str, path: Path) -> None:
        """Save the running domain's whole state to `path`; the domain is gone afterwards."""

    def restore(self, path: Path, spec: RestoreSpec) -> str:
        """Start the domain saved at `path` again, with its disk and logs moved as `spec`
        says; returns its name."""

    def cpu_time_ns(self, name: str) -> int | None:
        """CPU time the domain has used so far, all its threads; None once it is gone."""

    def set_cpu_shares(self, name: str, shares: int) -> None:
        """The domain's CPU weight against the others (its cgroup's cpu.shares)."""

    def reap_networks(self, gone: Callable[[str], bool]) -> list[str]:
        """Remove what the egress guests of owners for which gone(owner) is true left of
        their networks (namespaces, relays, taps); the names removed."""

    def close(self) -> None:
        """Release the connection; domains started with it are destroyed with it."""
