"""The initramfs, written in pure Python: a gzip'd cpio "newc" archive.

It holds /init (boot/initramfs-init), a static busybox with the applets /init uses, and the
kernel modules needed to reach the root disk, the agent's port, the RNG and the NIC of a guest
granted egress, in load order
(modules.dep is not shipped in Debian's kernel .deb, so the order is fixed here and checked
against each module's own `depends=` list). Compressed modules (.ko.xz, .ko.gz) are unpacked.
"""

from __future__ import annotations

import gzip
import lzma
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError
from .kernel import KernelTree

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_LEN = 110
LOAD_ORDER = "lib/modules/load-order"  # one module file name a line, loaded in this order
# The virtio transport, block and console drivers, in an order that satisfies their symbols.
VIRTIO_MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
                  "virtio_pci", "virtio_blk", "virtio_console")
# The NIC of a guest granted egress (virtio-net; unused, and no device, in the others):
# virtio_net needs net_failover, which needs failover, where they are modules.
NET_MODULES = ("failover", "net_failover", "virtio_net")
# ext4 and what it needs; packed only where they are modules rather than built in.
EXT4_MODULES = ("crc16", "crc32c_generic", "mbcache", "jbd2", "ext4")
# Packed when the kernel has it: with a virtio-rng device the kernel's RNG is ready at once;
# without one, the guest's first getrandom() waits ~1 s for jitter entropy under TCG.
ENTROPY_MODULES = ("virtio_rng",)
APPLETS = ("sh", "cat", "echo", "insmod", "ip", "mkdir", "mount", "poweroff", "sleep",
           "switch_root", "umount", "usleep")
DIRS = ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    mode: int  # file type and permission bits, as in st_mode
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)


def directory(name: str) -> Entry:
    return Entry(name, stat.S_IFDIR | 0o755)


def regular(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def chardev(name: str, major: int, minor: int, perm: int) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc(entries: Iterable[Entry]) -> bytes:
    """An uncompressed cpio newc archive; owned by root, mtime 0, so the bytes are reproducible."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = entry.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev,
                  len(name), 0)
        header = MAGIC + b"".join(b"%08X" % field for field in fields)
        out += header + name + _pad4(HEADER_LEN + len(name))
        out += entry.data + _pad4(len(entry.data))
    return bytes(out)


def read_newc(archive: bytes) -> list[Entry]:
    """Parse a newc archive back into entries (without the trailer); for tests and inspection."""
    entries: list[Entry] = []
    pos = 0
    while True:
        if archive[pos:pos + 6] != MAGIC:
            raise ValueError(f"no newc header at offset {pos}")
        fields = [int(archive[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        pos += HEADER_LEN
        name = archive[pos:pos + namesize - 1].decode()
        pos += namesize + len(_pad4(HEADER_LEN + namesize))
        if name == TRAILER:
            return entries
        entries.append(Entry(name, mode, archive[pos:pos + size], rdev))
        pos += size + len(_pad4(size))


def modinfo(ko: bytes) -> dict[str, str]:
    """The key=value strings of a module's .modinfo section (depends, name, vermagic, ...)."""
    return {k.decode(): v.decode(errors="replace")
            for k, v in re.findall(rb"\0(depends|name|vermagic)=([^\0]*)", ko)}


def check_static(busybox: Path) -> bytes:
    """The bytes of a statically linked busybox, or a BuildError that says which package."""
    try:
        data = busybox.read_bytes()
    except OSError as err:
        raise BuildError("initramfs", f"cannot read {busybox}: install busybox-static") from err
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise BuildError("initramfs", f"{busybox} is not a 64-bit ELF executable")
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    for i in range(int.from_bytes(data[0x38:0x3A], "little")):
        if int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little") == 3:
            raise BuildError("initramfs", f"{busybox} is dynamically linked and cannot run "
                             "in the initramfs: install busybox-static")
    return data


class ModuleSet:
    """The modules of an unpacked kernel: which are built in, and where the others' files are."""

    def __init__(self, tree: KernelTree) -> None:
        self.tree = tree
        builtin = tree.modules_dir / "modules.builtin"
        lines = builtin.read_text().split() if builtin.is_file() else []
        self.builtin = {_module_name(line) for line in lines}
        self.files = {_module_name(p.name): p
                      for p in (tree.modules_dir / "kernel").rglob("*.ko*")}

    def load(self, name: str) -> bytes:
        path = self.files[name]
        data = path.read_bytes()
        if path.name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if path.name.endswith(".ko.gz"):
            return gzip.decompress(data)
        if path.name.endswith(".ko"):
            return data
        raise BuildError("initramfs", f"cannot decompress {path.name} (only .ko, .ko.xz, .ko.gz)")

    def select(self) -> list[tuple[str, bytes]]:
        """(name, uncompressed .ko) in load order; BuildError when a dependency is unmet."""
        chosen: list[tuple[str, bytes]] = []
        for name in VIRTIO_MODULES + NET_MODULES + EXT4_MODULES + ENTROPY_MODULES:
            if name in self.builtin:
                continue
            if name not in self.files:
                if name in VIRTIO_MODULES or name in ("ext4", "virtio_net"):
                    raise BuildError("initramfs", f"kernel {self.tree.release} has neither a "
                                     f"module nor a built-in {name}")
                continue
            chosen.append((name, self.load(name)))
        self._check_order(chosen)
        return chosen

    def _check_order(self, chosen: list[tuple[str, bytes]]) -> None:
        loaded = set(self.builtin)
        for name, ko in chosen:
            deps = [d for d in modinfo(ko).get("depends", "").split(",") if d]
            missing = [d for d in deps if _module_name(d) not in loaded]
            if missing:
                raise BuildError("initramfs", f"module {name} of kernel {self.tree.release} "
                                 f"needs {', '.join(missing)}, which would not be loaded before it")
            loaded.add(name)


def _module_name(path_or_name: str) -> str:
    base = path_or_name.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.\w+)?$", "", base).replace("-", "_")


def entries_for(init_script: bytes, busybox: bytes,
                modules: list[tuple[str, bytes]]) -> list[Entry]:
    entries = [directory(d) for d in DIRS]
    entries += [chardev("dev/console", 5, 1, 0o600), chardev("dev/null", 1, 3, 0o666)]
    entries.append(regular("init", init_script, 0o755))
    entries.append(regular("bin/busybox", busybox, 0o755))
    entries += [symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries += [regular(f"lib/modules/{name}.ko", ko) for name, ko in modules]
    order = "".join(f"{name}.ko\n" for name, _ in modules)
    entries.append(regular(LOAD_ORDER, order.encode()))
    return entries


def build_initramfs(out: Path, tree: KernelTree, init_script: Path,
                    busybox: Path = Path("/bin/busybox")) -> list[str]:
    """Write the gzip'd initramfs to `out`; return the names of the packed modules, in order."""
    modules = ModuleSet(tree).select()
    archive = newc(entries_for(init_script.read_bytes(), check_static(busybox), modules))
    out.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))
    return [name for name, _ in modules]
