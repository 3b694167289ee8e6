"""The real Hypervisor: transient libvirt domains on qemu:///system.

Domains are started with VIR_DOMAIN_START_AUTODESTROY, so if the node agent dies, even by
SIGKILL, libvirtd destroys its VMs when the connection drops; the reaper removes the overlays.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import libvirt

from tryfleet.images.guestagent.wire import PORT_NAME

from .errors import HypervisorError, HypervisorUnavailable
from .guestnet import GuestNet, reap_networks
from .hypervisor import DOMAIN_PREFIX, EGRESS_PROXY, DomainSpec, RestoreSpec

DEFAULT_URI = "qemu:///system"
CMDLINE = "console=ttyS0 root=/dev/vda rw quiet panic=-1 init=/sbin/tryfleet-init"
METADATA_NS = "https://tryfleet.dev/xmlns/vm/1"
START_HINT = ("start them with `bash scripts/setup.sh` (or by hand: `virtlogd -d && libvirtd -d`)")

# libvirt prints every error to stderr as well unless a handler takes them.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def domain_xml(spec: DomainSpec, tap: str | None = None) -> str:
    """The domain definition: no NIC (unless granted egress: see _nic_xml), no host
    mounts, no USB, no balloon; dies on reboot."""
    meta = "".join(
        f"<tf:{k}>{escape(v)}</tf:{k}>" for k, v in sorted(spec.metadata.items())
    )
    cmdline = f"{CMDLINE} {spec.cmdline_extra}".strip()
    nic = ""
    if tap is not None:  # spec.egress_socket's guest, on the tap of its GuestNet
        cmdline += f" tryfleet.egress={EGRESS_PROXY}"
        nic = _nic_xml(tap)
    cpu = "<cpu mode='host-passthrough'/>" if spec.accel == "kvm" else ""
    return f"""<domain type='{'kvm' if spec.accel == 'kvm' else 'qemu'}'>
  <name>{escape(spec.name)}</name>
  <metadata><tf:vm xmlns:tf='{METADATA_NS}'>{meta}</tf:vm></metadata>
  <memory unit='MiB'>{spec.mem_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(spec.kernel))}</kernel>
    <initrd>{escape(str(spec.initrd))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>{cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {_disk_xml(spec)}{nic}<serial type='file'>
      <source path={quoteattr(str(spec.console_log))}/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='{PORT_NAME}'/>
    </channel>
    <rng model='virtio'>
      <rate period='1000' bytes='65536'/>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


def _nic_xml(tap: str) -> str:
    """The one NIC of a guest granted egress: a tap the node made (managed='no': libvirt only
    opens it), which the node then moves into a network namespace of that guest's own, where
    nothing but the proxy's port answers (see nodeagent/guestnet.py)."""
    return f"""<interface type='ethernet'>
      <target dev={quoteattr(tap)} managed='no'/>
      <model type='virtio'/>
    </interface>
    """


def _disk_xml(spec: DomainSpec) -> str:
    if spec.disk is None or spec.backing is None:
        return ""
    return f"""<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file={quoteattr(str(spec.disk))}/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file={quoteattr(str(spec.backing))}/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    """


def restore_xml(saved: str, spec: RestoreSpec) -> tuple[str, str]:
    """The saved definition with the disk moved to a fresh overlay (its backing chain written
    out whole), the console moved, the agent socket left for libvirt to place, and the
    metadata replaced. Returns (xml, domain name)."""
    ET.register_namespace("tf", METADATA_NS)
    root = ET.fromstring(saved)
    name = root.findtext("name") or ""
    for disk in root.iter("disk"):
        if disk.get("device") != "disk":
            continue
        for old in disk.findall("source") + disk.findall("backingStore"):
            disk.remove(old)
        driver = disk.find("driver")
        anchor = list(disk).index(driver) + 1 if driver is not None else 0
        disk.insert(anchor, ET.Element("source", file=str(spec.disk)))
        parent = disk
        pos = anchor + 1
        for backing in spec.chain:
            store = ET.Element("backingStore", type="file")
            ET.SubElement(store, "format", type="qcow2")
            ET.SubElement(store, "source", file=str(backing))
            parent.insert(pos, store)
            parent, pos = store, 2
        parent.insert(pos, ET.Element("backingStore"))
    for tag in ("serial", "console"):
        for dev in root.iter(tag):
            src = dev.find("source")
            if src is not None and dev.get("type") == "file":
                src.set("path", str(spec.console_log))
                src.set("append", "on")  # after the boot log the node agent put there
    for chan in root.iter("channel"):
        src = chan.find("source")
        if src is not None:
            src.attrib.pop("path", None)
    meta = root.find("metadata")
    if meta is not None:
        for child in list(meta):
            meta.remove(child)
        vm = ET.SubElement(meta, f"{{{METADATA_NS}}}vm")
        for key, value in sorted(spec.metadata.items()):
            ET.SubElement(vm, f"{{{METADATA_NS}}}{key}").text = value
    return ET.tostring(root, encoding="unicode"), name


class LibvirtHypervisor:
    def __init__(self, uri: str = DEFAULT_URI) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._handle = self._open()
        self._nets: dict[str, GuestNet] = {}  # domains granted egress: their network

    def _open(self) -> Any:
        try:
            return libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            raise HypervisorUnavailable(
                f"cannot connect to libvirt at {self.uri}: {err.get_error_message()}; "
                f"{START_HINT}") from err

    @property
    def _conn(self) -> Any:
        """The connection, opened again when libvirtd restarted under it."""
        with self._lock:
            try:
                alive = self._handle.isAlive() == 1
            except libvirt.libvirtError:
                alive = False
            if not alive:
                self._handle = self._open()
            return self._handle

    def start(self, spec: DomainSpec) -> None:
        net = None
        if spec.egress_socket is not None:
            net = self._nets[spec.name] = GuestNet.of(spec.name, spec.egress_socket)
        try:
            if net is not None:
                net.make()
            try:
                self._conn.createXML(domain_xml(spec, net.tap if net else None),
                                     libvirt.VIR_DOMAIN_START_AUTODESTROY)
            except libvirt.libvirtError as err:
                raise HypervisorError(
                    f"failed to start domain {spec.name} ({spec.accel}, kernel {spec.kernel}): "
                    f"{err.get_error_message()}"
                ) from err
            if net is not None:  # at once: the guest is still in its firmware
                net.isolate()
        except BaseException:
            if net is not None:
                self.destroy(spec.name)
            raise

    def channel_path(self, name: str) -> str:
        xml = self.domain_xml(name)
        if xml is None:
            raise HypervisorError(f"domain {name} is gone before its channel was opened")
        for chan in ET.fromstring(xml).iter("channel"):
            target, source = chan.find("target"), chan.find("source")
            if target is not None and target.get("name") == PORT_NAME and source is not None:
                path = source.get("path")
                if path:
                    return path
        raise HypervisorError(f"domain {name} has no {PORT_NAME} channel")

    def open_channel(self, name: str) -> socket.socket:
        path = self.channel_path(name)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                sock.connect(path)
                return sock
            except (FileNotFoundError, ConnectionRefusedError) as err:
                if time.monotonic() > deadline:
                    sock.close()
                    raise HypervisorError(f"cannot connect to {path} of {name}: {err}") from err
                time.sleep(0.01)

    def destroy(self, name: str) -> None:
        try:
            self._destroy(name)
        finally:
            net = self._nets.pop(name, None)
            if net is not None:  # after its QEMU: nothing holds the tap any more
                net.remove()

    def _destroy(self, name: str) -> None:
        try:
            dom = self._conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise HypervisorError(f"failed to look up {name}: {err.get_error_message()}") from err
        try:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
        except libvirt.libvirtError as err:
            gone = (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID)
            if err.get_error_code() in gone:
                return
            raise HypervisorError(f"failed to destroy {name}: {err.get_error_message()}") from err

    def save(self, name: str, path: Path) -> None:
        try:
            self._conn.lookupByName(name).save(str(path))
        except libvirt.libvirtError as err:
            raise HypervisorError(f"failed to save {name}: {err.get_error_message()}") from err

    def restore(self, path: Path, spec: RestoreSpec) -> str:
        try:
            saved = self._conn.saveImageGetXMLDesc(str(path), 0)
        except libvirt.libvirtError as err:
            raise HypervisorError(f"unreadable saved domain {path}: "
                                  f"{err.get_error_message()}") from err
        xml, name = restore_xml(saved, spec)
        try:
            self._conn.restoreFlags(str(path), xml, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        except libvirt.libvirtError as err:
            raise HypervisorError(f"failed to restore {name} from {path}: "
                                  f"{err.get_error_message()}") from err
        return name

    def list_domains(self, prefix: str = DOMAIN_PREFIX) -> list[str]:
        try:
            doms = self._conn.listAllDomains(0)
        except libvirt.libvirtError as err:
            raise HypervisorError(f"failed to list domains: {err.get_error_message()}") from err
        return sorted(d.name() for d in doms if d.name().startswith(prefix))

    def domain_xml(self, name: str) -> str | None:
        try:
            return str(self._conn.lookupByName(name).XMLDesc(0))
        except libvirt.libvirtError:
            return None

    def reap_networks(self, gone: Callable[[str], bool]) -> list[str]:
        """The egress networks (namespaces, relays, taps) of owners that are gone."""
        return reap_networks(gone)

    def cpu_time_ns(self, name: str) -> int | None:
        try:
            return int(self._conn.lookupByName(name).info()[4])
        except libvirt.libvirtError:
            return None

    def set_cpu_shares(self, name: str, shares: int) -> None:
        try:
            self._conn.lookupByName(name).setSchedulerParametersFlags(
                {"cpu_shares": shares}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as err:
            raise HypervisorError(f"failed to set the CPU shares of {name} to {shares}: "
                                  f"{err.get_error_message()}") from err

    def close(self) -> None:
        for name in list(self._nets):
            with contextlib.suppress(HypervisorError):
                self.destroy(name)
        with contextlib.suppress(libvirt.libvirtError):
            self._handle.close()
