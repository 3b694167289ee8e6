"""Build a golden image from its recipe: debootstrap rootfs, Debian kernel, initramfs, qcow2.

Content-addressed: the digest covers every input (see digest.py), and a complete build with the
same digest is reused unless forced. The build runs in a scratch directory under data_dir/tmp
and is renamed into place only when finished; nothing is left behind when a step fails.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from .digest import BOOT_DIR, BUILDER_VERSION, GUESTAGENT_DIR, compute_digest, guestagent_files
from .errors import BuildError
from .initramfs import build_initramfs, check_static
from .kernel import Apt, KernelPackage, unpack
from .recipe import Recipe
from .steps import Clock, find_tool, run
from .store import INITRD, KERNEL, MANIFEST, ROOTFS, BuiltImage, ImageStore, remove_tree

__all__ = ["BUILDER_VERSION", "build"]

MIB = 1024 * 1024
AGENT_DIR = "/opt/tryfleet/guestagent"
INIT_PATH = "/sbin/tryfleet-init"
FS_BYTES_PATH = "/etc/tryfleet/rootfs-bytes"  # read by tryfleet-init to decide on resize2fs
HOSTNAME = "sandbox"
HOSTS = (f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
         "::1\t\tlocalhost ip6-localhost ip6-loopback\n")
# Removed from the rootfs to shrink it; the guest has no network and installs nothing.
SHRINK = ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man",
          "usr/share/info", "usr/share/locale", "var/log", "var/cache/debconf")
KEEP = ("usr/share/locale/locale.alias", "var/cache/debconf/config.dat",
        "var/cache/debconf/templates.dat", "var/cache/debconf/passwords.dat")
TOOLS = {"debootstrap": "debootstrap", "chroot": "coreutils", "dpkg": "dpkg",
         "dpkg-query": "dpkg", "apt-get": "apt", "mkfs.ext4": "e2fsprogs",
         "dumpe2fs": "e2fsprogs", "qemu-img": "qemu-utils", "umount": "mount"}
BUSYBOX = Path("/bin/busybox")


def build(name: str, store: ImageStore, *, force: bool = False,
          progress: Callable[[str], None] = print) -> BuiltImage:
    """Build image `name` (or return the existing build with the same digest)."""
    recipe = store.recipe(name)
    apt = Apt()
    kernel = apt.resolve(recipe.kernel_package)
    digest = compute_digest(recipe.path, kernel.spec)
    with store.lock(name):
        existing = store.find(name, digest)
        if existing is not None and not force:
            progress(f"{name} {digest[:12]} is up to date ({existing.path})")
            store.make_current(name, digest)
            return existing
        preflight()
        store.clean_stale()
        clock = Clock(progress)
        progress(f"building {name} {digest[:12]} (kernel {kernel.spec})")
        with store.workspace(name) as work:
            staging = store.staging_dir(name, digest)
            try:
                manifest = _build_into(recipe, kernel, digest, apt, work, staging, clock)
                clock.done("committing")
                manifest["steps_s"] = clock.durations
                manifest["build_s"] = round(clock.elapsed_s(), 1)
                (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
                built = store.commit(staging, name, digest, replace=force)
                store.make_current(name, digest)
            finally:
                remove_tree(staging)
    clock.done(f"built {name} {digest[:12]}: {built.size_bytes / MIB:.0f} MiB in {built.path}")
    return built


def preflight() -> None:
    if os.geteuid() != 0:
        raise BuildError("preflight", "building an image needs root (debootstrap, chroot); "
                         "run `sudo tryfleet image build NAME`")
    for tool, package in TOOLS.items():
        find_tool(tool, f"install the {package} package (scripts/setup.sh)")
    check_static(BUSYBOX)


def _build_into(recipe: Recipe, kernel: KernelPackage, digest: str, apt: Apt, work: Path,
                staging: Path, clock: Clock) -> dict[str, Any]:
    rootfs = work / "rootfs"
    clock.step("debootstrap", f"{recipe.suite} {recipe.variant} + {', '.join(recipe.packages)}")
    debootstrap(recipe, rootfs)
    clock.step("guest agent", f"{AGENT_DIR}, {INIT_PATH} and /etc/fstab")
    install_guest_files(rootfs)
    clock.step("configure", f"hostname {HOSTNAME}, hosts, package list")
    packages = configure(rootfs)
    if recipe.users:
        clock.step("users", ", ".join(f"{u.name} ({u.uid})" for u in recipe.users))
        add_users(rootfs, recipe)
    clock.step("shrink", "apt lists and caches, docs, man pages, locales, logs")
    shrink(rootfs)
    clock.step("kernel", f"apt-get download {kernel.spec}")
    tree = unpack(apt.download(kernel, work / "deb"), work / "kernel", kernel.release)
    shutil.copyfile(tree.vmlinuz, staging / KERNEL)
    clock.step("initramfs", f"busybox + virtio modules of {kernel.release}")
    modules = build_initramfs(staging / INITRD, tree, BOOT_DIR / "initramfs-init", BUSYBOX)
    used_mib = usage_bytes(rootfs) / MIB
    size_mib = fs_size_mib(used_mib, recipe.headroom_mib)
    clock.step("filesystem", f"mkfs.ext4 -d: {used_mib:.0f} MiB of files in {size_mib} MiB")
    fs_bytes = guest_path(rootfs, FS_BYTES_PATH)
    fs_bytes.parent.mkdir(parents=True, exist_ok=True)
    fs_bytes.write_text(f"{size_mib * MIB}\n")
    raw = work / "img.raw"
    run("filesystem", ["mkfs.ext4", "-q", "-L", "tryfleet-root", "-E",
                       "lazy_itable_init=0,lazy_journal_init=0", "-d", str(rootfs), str(raw),
                       f"{size_mib}M"])
    free_mib = fs_free_mib(raw)
    clock.step("qcow2", "qemu-img convert -O qcow2")
    run("qcow2", ["qemu-img", "convert", "-O", "qcow2", str(raw), str(staging / ROOTFS)])
    return {
        "name": recipe.name, "digest": digest, "builder_version": BUILDER_VERSION,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel_version": kernel.release, "kernel_package": kernel.spec,
        "modules": modules, "disk_mib": size_mib, "warm": list(recipe.warm),
        "users": [u.name for u in recipe.users],
        "rootfs_used_mib": round(used_mib), "rootfs_free_mib": free_mib,
        "recipe": {"suite": recipe.suite, "variant": recipe.variant, "mirror": recipe.mirror,
                   "packages": list(recipe.packages), "headroom_mib": recipe.headroom_mib},
        "packages": packages,
        "files": {p.name: p.stat().st_size for p in sorted(staging.iterdir())},
    }


def debootstrap(recipe: Recipe, rootfs: Path) -> None:
    run("debootstrap", ["debootstrap", f"--variant={recipe.variant}",
                        f"--include={','.join(recipe.packages)}", recipe.suite, str(rootfs),
                        recipe.mirror])


def guest_path(rootfs: Path, path: str) -> Path:
    """`path` inside the rootfs, following the rootfs's own symlinks (/sbin -> usr/sbin) in it."""
    current = rootfs
    for part in PurePosixPath(path).relative_to("/").parts:
        candidate = current / part
        hops = 0
        while candidate.is_symlink():
            hops += 1
            if hops > 20:
                raise BuildError("guest agent", f"too many symlinks at {candidate}")
            target = os.readlink(candidate)
            base = rootfs if target.startswith("/") else candidate.parent
            candidate = base / target.lstrip("/")
        current = candidate
    if not current.resolve().is_relative_to(rootfs.resolve()):
        raise BuildError("guest agent", f"{path} leads out of the rootfs ({current})")
    return current


def install_guest_files(rootfs: Path) -> None:
    agent_dir = guest_path(rootfs, AGENT_DIR)
    agent_dir.mkdir(parents=True, exist_ok=True)
    sources = guestagent_files(GUESTAGENT_DIR)
    if not any(p.name == "agent.py" for p in sources):
        raise BuildError("guest agent", f"{GUESTAGENT_DIR}/agent.py does not exist")
    for source in sources:
        shutil.copyfile(source, agent_dir / source.name)
        (agent_dir / source.name).chmod(0o644)
    init = guest_path(rootfs, INIT_PATH)
    shutil.copyfile(BOOT_DIR / "tryfleet-init", init)
    init.chmod(0o755)
    fstab = guest_path(rootfs, "/etc/fstab")
    fstab.unlink(missing_ok=True)
    shutil.copyfile(BOOT_DIR / "fstab", fstab)
    fstab.chmod(0o644)
    # Byte-compile the agent's modules now rather than at every boot (python3 of the guest).
    run("guest agent", ["chroot", str(rootfs), "/usr/bin/python3", "-m", "compileall", "-q",
                        AGENT_DIR])


def configure(rootfs: Path) -> list[str]:
    """Hostname, hosts, mtab; return the installed packages as `name=version`."""
    guest_path(rootfs, "/etc/hostname").write_text(HOSTNAME + "\n")
    guest_path(rootfs, "/etc/hosts").write_text(HOSTS)
    mtab = guest_path(rootfs, "/etc/mtab")
    if not mtab.is_symlink():
        mtab.unlink(missing_ok=True)
        mtab.symlink_to("../proc/self/mounts")
    out = run("configure", ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W",
                            "-f", "${Package}=${Version}\\n"]).stdout
    return sorted(out.split())


def add_users(rootfs: Path, recipe: Recipe) -> None:
    """The recipe's users, made with the image's own useradd: a group of the same name and
    id, the home made from /etc/skel and owned by the user, the shell checked first."""
    for user in recipe.users:
        if not guest_path(rootfs, user.shell).is_file():
            raise BuildError("users", f"the shell {user.shell} of user {user.name} is not in "
                             f"the image (add the package that has it to 'packages')")
        run("users", ["chroot", str(rootfs), "useradd", "--uid", str(user.uid), "--user-group",
                      "--create-home", "--home-dir", user.home, "--shell", user.shell,
                      user.name])


def shrink(rootfs: Path) -> None:
    keep = {rootfs / k for k in KEEP}
    for folder in (rootfs / d for d in SHRINK):
        if folder.is_dir() and not folder.is_symlink():
            for child in folder.iterdir():
                if child not in keep and not any(k.is_relative_to(child) for k in keep):
                    remove_tree(child)


def usage_bytes(rootfs: Path) -> int:
    """Disk usage of the tree in 4 KiB blocks, as ext4 will store it (inodes not counted)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(rootfs):
        total += 4096 * (1 + len(dirnames))
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += math.ceil(st.st_size / 4096) * 4096
    return total


def fs_size_mib(used_mib: float, headroom_mib: int) -> int:
    """Filesystem size for `used_mib` of files plus `headroom_mib` free: ext4 spends ~3% on
    inode tables and bitmaps, and up to 64 MiB on the journal."""
    return math.ceil((used_mib + headroom_mib) * 1.04) + 64


def fs_free_mib(raw: Path) -> int:
    out = run("filesystem", ["dumpe2fs", "-h", str(raw)]).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    free = int(fields["Free blocks"]) * int(fields["Block size"])
    return free // MIB
