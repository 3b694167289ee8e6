"""images/: the cpio newc writer, the initramfs (busybox, modules, load order), boot scripts."""

import gzip
import lzma
import stat
import subprocess

import pytest

from tryfleet.images.digest import BOOT_DIR
from tryfleet.images.errors import BuildError
from tryfleet.images.initramfs import (
    LOAD_ORDER,
    NET_MODULES,
    VIRTIO_MODULES,
    build_initramfs,
    chardev,
    directory,
    newc,
    read_newc,
    regular,
    symlink,
)
from tryfleet.images.kernel import KernelTree

RELEASE = "6.1.0-99-cloud-amd64"
INIT = BOOT_DIR / "initramfs-init"


# --- cpio newc --------------------------------------------------------------------------------

def test_newc_round_trip_keeps_names_modes_and_contents():
    entries = [directory("bin"), regular("init", b"#!/bin/sh\necho hi\n", 0o755),
               regular("odd", b"12345"), symlink("bin/sh", "busybox"),
               chardev("dev/console", 5, 1, 0o600)]
    archive = newc(entries)
    assert len(archive) % 4 == 0 and b"TRAILER!!!" in archive
    assert read_newc(archive) == entries
    back = {e.name: e for e in read_newc(archive)}
    assert stat.S_ISDIR(back["bin"].mode) and stat.S_IMODE(back["init"].mode) == 0o755
    assert stat.S_ISLNK(back["bin/sh"].mode) and back["bin/sh"].data == b"busybox"
    assert stat.S_ISCHR(back["dev/console"].mode) and back["dev/console"].rdev == (5, 1)


def test_newc_holds_no_time_owner_or_inode_of_the_build_host():
    # Each header: magic 070701, then 13 fields of 8 hex digits: ino, mode, uid, gid, nlink,
    # mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check. Header and
    # name are padded to 4 bytes, and so is the data. Inodes count from 1, times and owners 0.
    def header(*fields):
        return b"070701" + "".join(fields).encode()

    zero = "00000000"
    a = header("00000001", "000081A4", zero, zero, "00000001", zero, "00000001", zero, zero,
               zero, zero, "00000002", zero) + b"a\0" + b"x\0\0\0"
    trailer = header("00000002", zero, zero, zero, "00000001", zero, zero, zero, zero, zero,
                     zero, "0000000B", zero) + b"TRAILER!!!\0" + b"\0\0\0"
    assert newc([regular("a", b"x")]) == a + trailer


def test_read_newc_rejects_garbage():
    with pytest.raises(ValueError, match="no newc header"):
        read_newc(b"not a cpio archive at all")


# --- initramfs ---------------------------------------------------------------------------------

def fake_elf(interp=False):
    """A minimal 64-bit ELF header with one program header (PT_INTERP when `interp`)."""
    header = bytearray(64 + 56)
    header[:5] = b"\x7fELF\x02"
    header[0x20:0x28] = (64).to_bytes(8, "little")
    header[0x36:0x38] = (56).to_bytes(2, "little")
    header[0x38:0x3A] = (1).to_bytes(2, "little")
    header[64:68] = (3 if interp else 1).to_bytes(4, "little")
    return bytes(header)


def fake_kernel(root, modules, builtin=("kernel/fs/ext4/ext4.ko",), xz=()):
    """An unpacked kernel package: module files whose .modinfo says what they depend on."""
    mods = root / "lib" / "modules" / RELEASE
    for name, deps in modules.items():
        path = mods / "kernel" / "drivers" / f"{name}.ko"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = b"\x7fELF...\0depends=" + deps.encode() + b"\0name=" + name.encode() + b"\0"
        if name in xz:
            path.with_suffix(".ko.xz").write_bytes(lzma.compress(body))
        else:
            path.write_bytes(body)
    (mods / "modules.builtin").write_text("".join(f"{line}\n" for line in builtin))
    return KernelTree(root, RELEASE)


VIRTIO_DEPS = {"virtio_ring": "", "virtio": "virtio_ring", "virtio_pci_modern_dev": "",
               "virtio_pci_legacy_dev": "", "virtio_pci": "virtio_ring,virtio",
               "virtio_blk": "virtio,virtio_ring", "virtio_console": "virtio,virtio_ring",
               "failover": "", "net_failover": "failover",
               "virtio_net": "net_failover,virtio,virtio_ring"}


@pytest.fixture
def busybox(tmp_path):
    path = tmp_path / "busybox"
    path.write_bytes(fake_elf())
    return path


def unpack_initrd(path):
    return {e.name: e for e in read_newc(gzip.decompress(path.read_bytes()))}


def test_initramfs_holds_init_busybox_and_modules_in_load_order(tmp_path, busybox):
    modules = {**VIRTIO_DEPS, "jbd2": "", "virtio-rng": "virtio,virtio_ring"}
    tree = fake_kernel(tmp_path / "k", modules, xz=("virtio",))
    out = tmp_path / "initrd.img"
    packed = build_initramfs(out, tree, INIT, busybox)
    # ext4 is built in here, jbd2 is a module; virtio-rng's file name has a dash
    assert packed == [*VIRTIO_MODULES, *NET_MODULES, "jbd2", "virtio_rng"]
    files = unpack_initrd(out)
    assert files["init"].data == (INIT).read_bytes()
    assert stat.S_IMODE(files["init"].mode) == 0o755
    assert files["bin/busybox"].data == busybox.read_bytes()
    assert files["bin/switch_root"].data == b"busybox" and files["bin/insmod"].data == b"busybox"
    assert files[LOAD_ORDER].data.decode().split() == [f"{m}.ko" for m in packed]
    assert files["lib/modules/virtio.ko"].data.startswith(b"\x7fELF")  # decompressed from .xz
    assert files["dev/console"].rdev == (5, 1)


def test_initramfs_refuses_a_load_order_that_breaks_a_dependency(tmp_path, busybox):
    tree = fake_kernel(tmp_path / "k", {**VIRTIO_DEPS, "virtio_ring": "virtio_blk"})
    with pytest.raises(BuildError, match=r"virtio_ring .* needs virtio_blk"):
        build_initramfs(tmp_path / "i", tree, INIT, busybox)


def test_initramfs_needs_every_virtio_module(tmp_path, busybox):
    deps = {k: v for k, v in VIRTIO_DEPS.items() if k != "virtio_blk"}
    with pytest.raises(BuildError, match="neither a module nor a built-in virtio_blk"):
        build_initramfs(tmp_path / "i", fake_kernel(tmp_path / "k", deps),
                        INIT, busybox)


def test_initramfs_refuses_a_dynamically_linked_busybox(tmp_path):
    dynamic = tmp_path / "busybox"
    dynamic.write_bytes(fake_elf(interp=True))
    with pytest.raises(BuildError, match="busybox-static"):
        build_initramfs(tmp_path / "i", fake_kernel(tmp_path / "k", VIRTIO_DEPS),
                        INIT, dynamic)


def test_boot_scripts_are_executable_and_poweroff_on_failure():
    for name in ("initramfs-init", "tryfleet-init"):
        path = BOOT_DIR / name
        assert path.stat().st_mode & 0o111, f"{name} is not executable"
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0
    init = (INIT).read_text()
    assert "TRYFLEET-CANARY-OK" in init and "switch_root" in init and "poweroff -f" in init


def test_initramfs_needs_virtio_net_for_guests_granted_egress(tmp_path, busybox):
    deps = {k: v for k, v in VIRTIO_DEPS.items() if k != "virtio_net"}
    with pytest.raises(BuildError, match="neither a module nor a built-in virtio_net"):
        build_initramfs(tmp_path / "i", fake_kernel(tmp_path / "k", deps), INIT, busybox)
